package tensor

// IPC modes: how a tensor's memory is shared.
const (
	ModeHost   = "host"
	ModeLegacy = "legacy"
	ModeVMM    = "vmm"
)

// States of a registry entry.
const (
	StateReady   = "ready"
	StateDeleted = "deleted" // no new references; freed when refcount reaches 0
)

// Info is the registry record of one tensor, as stored in its Redis hash and
// returned to clients.
type Info struct {
	Name        string  `json:"name"`
	UID         string  `json:"uid"`
	DType       DType   `json:"dtype"`
	Shape       []int64 `json:"shape"`
	Device      int     `json:"device"`
	DeviceUUID  string  `json:"device_uuid,omitempty"`
	Bytes       uint64  `json:"bytes"`
	IPCMode     string  `json:"ipc_mode"`
	IPCHandle   string  `json:"ipc_handle"`
	Offset      uint64  `json:"offset"`
	SegmentID   string  `json:"segment_id"`
	SegmentSize uint64  `json:"segment_size"`
	OwnerPID    int     `json:"owner_pid"`
	Refcount    int64   `json:"refcount"`
	State       string  `json:"state"`
	Agent       string  `json:"agent"`
	Node        string  `json:"node"`
	Tenant      string  `json:"tenant,omitempty"`
	Event       string  `json:"event,omitempty"` // base64 CUipcEventHandle of the last publish
	Ctime       int64   `json:"ctime"`
	Mtime       int64   `json:"mtime"`
}
