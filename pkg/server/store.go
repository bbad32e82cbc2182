package server

import (
	"context"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

// The server's view of the agent's store: what the socket's operations
// call, in small parts. *store.Store implements Store.

// Agent describes the agent for hello.
type Agent interface {
	Instance() string
	Node() string
	Mode() v1.IPCMode
	Devices() []backend.Device
	Ping(ctx context.Context) error
}

// Leases open and close the lease of each connection.
type Leases interface {
	OpenLease() string
	CloseLease(ctx context.Context, holder string, names []string) error
}

// References take and drop references.
type References interface {
	Create(ctx context.Context, p store.CreateParams) (v1.Tensor, store.Commit, error)
	Get(ctx context.Context, p store.GetParams) (v1.Tensor, store.Commit, error)
	ReleaseBehind(ctx context.Context, p store.ReleaseParams) (registry.ReleaseResult, store.Commit, error)
	// AfterAnswer runs what may wait until an answer was written.
	AfterAnswer()
}

// Memory is what a connection holding a tensor asks of its memory.
type Memory interface {
	// Live reports whether a tensor uid still has memory and is not deleted.
	Live(uid string) bool
	// SegmentsOf are the segments a tensor uid lies in, for their
	// descriptors (more than one for a tensor in pieces).
	SegmentsOf(uid string) ([]backend.Segment, bool)
	// Pieced reports whether name's live tensor lies in pieces.
	Pieced(name string) bool
	AttachFence(uid string, f store.Fence) bool
}

// Records change and read tensor records.
type Records interface {
	Publish(ctx context.Context, name, event string) error
	Delete(ctx context.Context, name, reqID string, who store.Who) (registry.ReleaseResult, error)
	Stat(ctx context.Context, name string) (v1.Tensor, error)
	List(ctx context.Context, prefix, cursor string, limit int) ([]v1.Tensor, string, error)
	Holders(ctx context.Context, name string) (map[string]int64, error)
}

// Maintenance is the agent's housekeeping on request.
type Maintenance interface {
	Stats() v1.Stats
	GC(ctx context.Context) (store.GCResult, error)
	Trim() (uint64, error)
}

// Survival is how clients of a previous agent instance come back.
type Survival interface {
	Reattach(ctx context.Context, name, oldHolder, newHolder string) (v1.Tensor, error)
	Offer(ctx context.Context, segmentID string, fd int, tenant string, checkTenant bool) error
}

// Segments tell a watch connection of its tenant's segments.
type Segments interface {
	WatchSegments(tenant string, fn func(store.SegmentEvent)) (stop func())
}

// Store is everything the server needs.
type Store interface {
	Segments
	Agent
	Leases
	References
	Memory
	Records
	Maintenance
	Survival
}

var _ Store = (*store.Store)(nil)
