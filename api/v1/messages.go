package v1

// Operations.
const (
	OpHello   = "hello"
	OpCreate  = "create"
	OpGet     = "get"
	OpRelease = "release"
	OpDelete  = "delete"
	OpList    = "list"
	OpStat    = "stat"
	OpStats   = "stats"
	OpGC      = "gc"
	OpTrim    = "trim"
	OpPublish = "publish"
	// OpForget tells the agent the client closed the descriptor of a
	// segment (Request.Segment): the next answer that needs it carries it
	// again. An open descriptor keeps the segment's memory allocated.
	OpForget = "forget"
	// OpHolders answers a tensor's reference holders and their counts.
	OpHolders = "holders"
	// OpReattach takes over, on a new connection, the references a
	// connection to a previous agent instance held (Holder, Refs): a client
	// reconnecting after its agent restarted.
	OpReattach = "reattach"
	// OpOffer passes the agent descriptors of segments (Segments, with the
	// frame's descriptors in the same order) that a previous agent instance
	// made and this client still maps: after a crash, vmm memory survives
	// only in the processes that hold it.
	OpOffer = "offer"
	// OpWatch makes the connection a watch of segments: once answered, it
	// takes no more requests, and the agent sends it frames of id 0 with
	// Pushed (each segment its tenant's pools hold, and each new one, the
	// descriptors attached in FDs' order) and Gone (segments released).
	// A client maps pushed segments ahead of its gets, so that its first
	// get of a tensor in one costs what a warm get costs.
	OpWatch = "watch"
	// OpCompactRecords asks for this connection's answers of one tensor
	// record (create, get, stat) in the compact record layout
	// (AppendCompactResponse) from the next answer on; every other answer
	// stays JSON. A client may send it right behind hello without waiting:
	// an agent without it answers unimplemented, and the answers stay JSON.
	OpCompactRecords = "compact-records"
	// OpPieces says that this connection's client maps a tensor stored in
	// pieces (Tensor.Pieces): its creates may be given pieces, and its gets
	// of such tensors are answered. A connection that never sent it gets
	// tensors of one piece only, and FailedPrecondition for a get of a
	// tensor in pieces. Like OpCompactRecords, it may go right behind hello.
	OpPieces = "pieces"
)

// Features an agent announces in hello beyond version 1's first ops.
const (
	// FeatureListPages: list takes prefix, limit and cursor and answers
	// next, so no answer outgrows the frame.
	FeatureListPages = "list-pages"
)

// MaxListLimit bounds the records of one list answer.
const MaxListLimit = 1000

// Request is a client's request.
type Request struct {
	ID     uint64  `json:"id"`
	Op     string  `json:"op"`
	Name   string  `json:"name,omitempty"`
	DType  string  `json:"dtype,omitempty"`
	Shape  []int64 `json:"shape,omitempty"` // absent: a scalar (shape [])
	Device string  `json:"device,omitempty"`
	Client string  `json:"client,omitempty"` // hello: client name and version
	// Event is a base64 CUipcEventHandle: on publish, the event readers wait
	// on; on release, GPU work the block must finish before it is reused.
	Event string `json:"event,omitempty"`
	// Segment is the segment id of a forget.
	Segment string `json:"segment,omitempty"`
	// Prefix, Limit and Cursor page a list: the names starting with
	// Prefix, in name order, at most Limit (0: all, if they fit in one
	// answer; at most MaxListLimit), after Cursor (the previous answer's Next).
	Prefix string `json:"prefix,omitempty"`
	Limit  int    `json:"limit,omitempty"`
	Cursor string `json:"cursor,omitempty"`
	// Holder is the connection holder (Hello.Holder) of a reattach's
	// previous connection; Refs are the references this client holds
	// through it, each name with the count the client has open.
	Holder string `json:"holder,omitempty"`
	Refs   []Ref  `json:"refs,omitempty"`
	// Segments are the segment ids of an offer's descriptors.
	Segments []string `json:"segments,omitempty"`
}

// Ref is a client's open references on one tensor.
type Ref struct {
	Name  string `json:"name"`
	Count int64  `json:"count"`
}

// Response is the agent's answer to the request with the same id.
type Response struct {
	ID      uint64    `json:"id"`
	OK      bool      `json:"ok"`
	Error   *Error    `json:"error,omitempty"`
	Tensor  *Tensor   `json:"tensor,omitempty"`
	Tensors []Tensor  `json:"tensors,omitempty"`
	Stats   *Stats    `json:"stats,omitempty"`
	Hello   *Hello    `json:"hello,omitempty"`
	GC      *GCResult `json:"gc,omitempty"`
	Trimmed uint64    `json:"trimmed,omitempty"`
	FDs     []string  `json:"fds,omitempty"` // segment ids of the attached descriptors
	// Next is the cursor of a list's next page, "" after the last.
	Next string `json:"next,omitempty"`
	// Holders are a tensor's reference holders and their counts (holders).
	Holders map[string]int64 `json:"holders,omitempty"`
	// Lost are the names of a reattach whose references could not be
	// taken over (the tensor is gone); the others' records are in Tensors.
	Lost []string `json:"lost,omitempty"`
	// Pushed and Gone are a watch's news (OpWatch): segments to map, and
	// ids of segments the agent released.
	Pushed []SegmentInfo `json:"pushed,omitempty"`
	Gone   []string      `json:"gone,omitempty"`
}

// SegmentInfo is what a client needs to map a segment: a vmm segment's
// descriptor travels with the frame, a legacy one's IPC handle here.
type SegmentInfo struct {
	ID         string  `json:"id"`
	Size       uint64  `json:"size"`
	Device     int     `json:"device"`
	DeviceUUID string  `json:"device_uuid,omitempty"`
	IPCMode    IPCMode `json:"ipc_mode"`
	IPCHandle  string  `json:"ipc_handle,omitempty"`
}

// Error carries an errdefs wire code and a message.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Hello describes the agent.
type Hello struct {
	Version  int      `json:"version"`
	Agent    string   `json:"agent"`
	Node     string   `json:"node"`
	Mode     IPCMode  `json:"mode"`
	Devices  []Device `json:"devices"`
	PeerPID  int      `json:"peer_pid"`
	Redis    bool     `json:"redis"` // the registry answered
	Software string   `json:"software"`
	// Features lists what this agent speaks beyond version 1's first ops
	// ("forget"), so a newer client can tell an older agent.
	Features []string `json:"features,omitempty"`
	// Holder is this connection's reference holder, which a reattach after
	// a restart of the agent names.
	Holder string `json:"holder,omitempty"`
}
