package v1

// The Redis command queue's messages (docs/redis-protocol.md): JSON
// commands on the list <prefix>cmd, replies on the list a command names.

// Command is one command of the queue.
type Command struct {
	Op      string  `json:"op"`
	Name    string  `json:"name,omitempty"`
	DType   string  `json:"dtype,omitempty"`
	Shape   []int64 `json:"shape"`            // null for ops other than create
	Device  string  `json:"device,omitempty"` // ordinal or UUID
	ID      string  `json:"id,omitempty"`
	ReplyTo string  `json:"reply_to,omitempty"`
	PID     int     `json:"pid,omitempty"`
	// PIDStart is the process's start time in clock ticks since boot (field
	// 22 of /proc/<pid>/stat), 0 when not given. With it the agent refuses
	// a pid that names another process in its PID namespace: a sender in a
	// namespace of its own would otherwise pin a reference on a stranger.
	PIDStart uint64 `json:"pid_start,omitempty"`
	// Prefix, Limit and Cursor page a list as on the socket (Limit 0: all).
	Prefix string `json:"prefix,omitempty"`
	Limit  int    `json:"limit,omitempty"`
	Cursor string `json:"cursor,omitempty"`
}

// Reply is what the agent pushes to a command's reply_to list.
type Reply struct {
	ID      string   `json:"id,omitempty"`
	OK      bool     `json:"ok"`
	Error   *Error   `json:"error,omitempty"`
	Tensor  *Tensor  `json:"tensor,omitempty"`
	Tensors []Tensor `json:"tensors,omitempty"`
	Next    string   `json:"next,omitempty"` // a list's next cursor, "" after the last page
}

// DeadLetter is an entry of the dead-letter list <prefix>dead.
type DeadLetter struct {
	Command string `json:"command"`
	Error   string `json:"error"`
	Time    int64  `json:"time"`
	Node    string `json:"node"`
}
