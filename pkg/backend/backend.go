// Package backend defines how the agent obtains shareable memory. The host
// backend (POSIX shared memory) lives in backend/host; the CUDA backends (vmm,
// legacy) implement the same interfaces over the cuda package.
package backend

import (
	"context"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/pool"
)

// Device is one memory device a backend serves.
type Device struct {
	Index    int    `json:"index"`
	UUID     string `json:"uuid,omitempty"`
	PCIBusID string `json:"pci_bus_id,omitempty"`
	Name     string `json:"name"`
	Total    uint64 `json:"total"` // bytes the device has (0 when unknown)
}

// Segment is a shareable piece of memory handed out by a backend.
type Segment interface {
	pool.Segment
	// ID is unique among every segment any agent instance ever made.
	ID() string
	// Handle is what the registry stores as ipc_handle: the shared-memory
	// object name (host), the base64 CUipcMemHandle (legacy), or "" (vmm).
	Handle() string
	// FD is a descriptor clients receive over the socket, or -1 when the
	// backend shares segments some other way.
	FD() int
	// Zero clears n bytes at off.
	Zero(ctx context.Context, off, n uint64) error
}

// AsyncZeroer is a Segment whose zero-fill can run while the caller does
// other work (the GPU backends: the fill is queued on the device).
type AsyncZeroer interface {
	// ZeroAsync starts clearing n bytes at off; wait returns once they are
	// zero. Nobody else may see the memory before wait returned.
	ZeroAsync(ctx context.Context, off, n uint64) (wait func() error, err error)
}

// Reopener is a backend whose segments outlive the agent process (host
// shared memory): a new instance opens a predecessor's segment by its ID,
// checking that it has the recorded size.
type Reopener interface {
	OpenSegment(ctx context.Context, device int, id string, size uint64) (Segment, error)
}

// Importer is a backend that takes over a segment from a descriptor of it
// (vmm: a client that maps the segment, or the predecessor in a hand-over,
// passes the exported descriptor). The segment keeps fd.
type Importer interface {
	ImportSegment(ctx context.Context, device int, id string, size uint64, fd int) (Segment, error)
}

// Keeper is a backend whose segments can be left for the next instance
// when the agent stops: after Keep, releasing a segment unmaps it here but
// leaves the memory (host: the shared-memory objects stay).
type Keeper interface {
	Keep()
}

// Backend makes segments on its devices.
type Backend interface {
	// Mode is the registry's ipc_mode for this backend's tensors.
	Mode() v1.IPCMode
	Devices() []Device
	// Granularity is the size every segment is a multiple of.
	Granularity(device int) uint64
	NewSegment(ctx context.Context, device int, size uint64) (Segment, error)
	Close() error
}
