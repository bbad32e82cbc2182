package v1

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// DType is an element type as it travels and as the registry stores it:
// the short canonical names (f32, bf16, ...).
type DType string

// The element types.
const (
	F16    DType = "f16"
	BF16   DType = "bf16"
	F32    DType = "f32"
	F64    DType = "f64"
	I8     DType = "i8"
	I16    DType = "i16"
	I32    DType = "i32"
	I64    DType = "i64"
	U8     DType = "u8"
	Bool   DType = "bool"
	F8E4M3 DType = "f8e4m3"
	F8E5M2 DType = "f8e5m2"
)

var itemSizes = map[DType]uint64{
	F16: 2, BF16: 2, F32: 4, F64: 8, I8: 1, I16: 2, I32: 4, I64: 8, U8: 1, Bool: 1, F8E4M3: 1, F8E5M2: 1,
}

// ItemSize is the size of one element in bytes (0 for an unknown dtype).
func (d DType) ItemSize() uint64 { return itemSizes[d] }

// Valid reports whether d is a canonical dtype.
func (d DType) Valid() bool { _, ok := itemSizes[d]; return ok }

// IPCMode is how a tensor's memory is shared.
type IPCMode string

// The IPC modes, one per backend.
const (
	// ModeHost: a POSIX shared-memory object; its descriptor travels over
	// the socket, its name is the record's ipc_handle.
	ModeHost IPCMode = "host"
	// ModeLegacy: cuMemAlloc memory shared by its CUipcMemHandle (base64 in
	// ipc_handle) plus the tensor's offset.
	ModeLegacy IPCMode = "legacy"
	// ModeVMM: cuMemCreate memory whose POSIX descriptor travels over the socket.
	ModeVMM IPCMode = "vmm"
)

// State is a tensor record's state.
type State string

// The states of a record.
const (
	StateReady   State = "ready"
	StateDeleted State = "deleted" // no new references; freed when refcount reaches 0
	// StateOrphaned: the agent that made it is gone and its memory lives on
	// only in the processes that had it open (legacy CUDA IPC): no new
	// references; the record goes with its last holder.
	StateOrphaned State = "orphaned"
)

// Tensor is the record of one tensor: what answers and queue replies carry
// and what the registry's hash holds (docs/redis-protocol.md).
type Tensor struct {
	Name        string  `json:"name"`
	UID         string  `json:"uid"`
	DType       DType   `json:"dtype"`
	Shape       []int64 `json:"shape"`
	Device      int     `json:"device"`
	DeviceUUID  string  `json:"device_uuid,omitempty"`
	Bytes       uint64  `json:"bytes"`
	IPCMode     IPCMode `json:"ipc_mode"`
	IPCHandle   string  `json:"ipc_handle"`
	Offset      uint64  `json:"offset"`
	SegmentID   string  `json:"segment_id"`
	SegmentSize uint64  `json:"segment_size"`
	OwnerPID    int     `json:"owner_pid"`
	Refcount    int64   `json:"refcount"`
	State       State   `json:"state"`
	Agent       string  `json:"agent"`
	Node        string  `json:"node"`
	Tenant      string  `json:"tenant,omitempty"`
	Event       string  `json:"event,omitempty"` // base64 CUipcEventHandle of the last publish
	Ctime       int64   `json:"ctime"`
	Mtime       int64   `json:"mtime"`
	// Pieces, when the tensor's bytes lie in more than one place: the
	// parts of segments that, mapped one after another into one virtual
	// range, hold it (its first is Offset in SegmentID). Empty for a tensor
	// of one piece, which lies at Offset in SegmentID alone.
	Pieces []Piece `json:"pieces,omitempty"`
}

// Piece is Size bytes at Offset of a segment, one part of a tensor in
// pieces. Every piece starts on a multiple of its backend's granularity,
// and every one but the last is a multiple of it in size, so that mapped
// side by side they abut.
type Piece struct {
	SegmentID   string `json:"segment_id"`
	SegmentSize uint64 `json:"segment_size"`
	Offset      uint64 `json:"offset"`
	Size        uint64 `json:"size"`
}

// MaxPieces bounds the pieces of one tensor: the descriptors one answer
// can carry (MaxFDs), so that a client gets every segment it needs to map
// a tensor with the tensor's record.
const MaxPieces = MaxFDs

// FormatPieces writes pieces as the registry's hash holds them:
// segment_id:segment_size:offset:size, joined by ','.
func FormatPieces(pieces []Piece) string {
	var b []byte
	for i, p := range pieces {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p.SegmentID...)
		b = append(b, ':')
		b = strconv.AppendUint(b, p.SegmentSize, 10)
		b = append(b, ':')
		b = strconv.AppendUint(b, p.Offset, 10)
		b = append(b, ':')
		b = strconv.AppendUint(b, p.Size, 10)
	}
	return string(b)
}

// ParsePieces reads FormatPieces' text ("" is no pieces).
func ParsePieces(s string) ([]Piece, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxPieces {
		return nil, fmt.Errorf("%d pieces, at most %d", len(parts), MaxPieces)
	}
	out := make([]Piece, len(parts))
	for i, part := range parts {
		f := strings.Split(part, ":")
		if len(f) != 4 || f[0] == "" {
			return nil, fmt.Errorf("piece %q is not segment_id:segment_size:offset:size", part)
		}
		var nums [3]uint64
		for j := range nums {
			v, err := strconv.ParseUint(f[j+1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("piece %q: %w", part, err)
			}
			nums[j] = v
		}
		if nums[2] == 0 || nums[1]+nums[2] > nums[0] || nums[1]+nums[2] < nums[1] {
			return nil, fmt.Errorf("piece %q lies outside its segment or is empty", part)
		}
		out[i] = Piece{SegmentID: f[0], SegmentSize: nums[0], Offset: nums[1], Size: nums[2]}
	}
	return out, nil
}

// Segments are the ids of the segments a tensor lies in, its first
// piece's first, each once.
func (t *Tensor) Segments() []string {
	if len(t.Pieces) == 0 {
		return []string{t.SegmentID}
	}
	out := make([]string, 0, len(t.Pieces))
	for _, p := range t.Pieces {
		if !slices.Contains(out, p.SegmentID) {
			out = append(out, p.SegmentID)
		}
	}
	return out
}

// Device is one memory device an agent serves.
type Device struct {
	Index    int    `json:"index"`
	UUID     string `json:"uuid,omitempty"`
	PCIBusID string `json:"pci_bus_id,omitempty"`
	Name     string `json:"name"`
	Total    uint64 `json:"total"` // bytes the device has (0 when unknown)
}

// PoolStats are one pool's statistics: a device and tenant's memory. Byte
// counts are block sizes, except Requested, which sums the sizes asked for.
type PoolStats struct {
	Device          int     `json:"device"`
	Tenant          string  `json:"tenant,omitempty"`
	Limit           uint64  `json:"limit"`
	Allocated       uint64  `json:"allocated"`
	Requested       uint64  `json:"requested"`
	Reserved        uint64  `json:"reserved"`
	PeakAllocated   uint64  `json:"peak_allocated"`
	PeakReserved    uint64  `json:"peak_reserved"`
	Segments        int     `json:"segments"`
	ActiveBlocks    int     `json:"active_blocks"`
	FreeBlocks      int     `json:"free_blocks"`
	LargestFree     uint64  `json:"largest_free"`
	Allocs          uint64  `json:"allocs"`
	Frees           uint64  `json:"frees"`
	SegmentAllocs   uint64  `json:"segment_allocs"`
	SegmentReleases uint64  `json:"segment_releases"`
	Fragmentation   float64 `json:"fragmentation"` // 1 - largest free block / all free bytes
}

// Stats are the agent's statistics.
type Stats struct {
	Tensors int         `json:"tensors"`
	Pending int         `json:"pending"` // freed blocks waiting for clients' GPU work
	Pools   []PoolStats `json:"pools"`
}

// GCResult reports a GC pass.
type GCResult struct {
	Holders int      `json:"holders"` // dead holders whose references were dropped
	Freed   []string `json:"freed"`   // tensors freed as a result
}
