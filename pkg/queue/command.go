// Package queue is the Redis control plane: JSON commands on a Redis List,
// taken with a reliable-queue pattern (BLMOVE into a per-node processing list,
// removed only once handled), answered on a reply list that expires, with
// malformed commands sent to a dead-letter list.
package queue

import (
	"encoding/json"
	"strconv"
	"strings"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// MaxCommandSize bounds one command's JSON.
const MaxCommandSize = 64 << 10

type wireCommand struct {
	Op       *string          `json:"op"`
	Name     *string          `json:"name"`
	DType    *string          `json:"dtype"`
	Shape    *[]int64         `json:"shape"`
	Device   *json.RawMessage `json:"device"`
	ID       *string          `json:"id"`
	ReplyTo  *string          `json:"reply_to"`
	PID      *int             `json:"pid"`
	PIDStart *uint64          `json:"pid_start"`
	Prefix   *string          `json:"prefix"`
	Limit    *int             `json:"limit"`
	Cursor   *string          `json:"cursor"`
}

// ParseError is a malformed command. ReplyTo and ID are set when they could
// be read, so the sender can still be told.
type ParseError struct {
	Err     error
	ID      string
	ReplyTo string
}

func (e *ParseError) Error() string { return e.Err.Error() }
func (e *ParseError) Unwrap() error { return e.Err }

var idOK = func(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			return false
		}
	}
	return true
}

// Parse decodes and validates a command. replyPrefix is the prefix every
// reply_to key must start with (so a command cannot make the agent write to
// arbitrary keys).
func Parse(raw []byte, replyPrefix string) (v1.Command, error) {
	if len(raw) > MaxCommandSize {
		return v1.Command{}, &ParseError{Err: errdefs.Invalid("command of %d bytes exceeds %d", len(raw), MaxCommandSize)}
	}
	var w wireCommand
	err := v1.StrictUnmarshal(raw, &w)
	pe := &ParseError{}
	// Salvage id and reply_to for the error reply, even from a bad command.
	var loose map[string]any
	if json.Unmarshal(raw, &loose) == nil {
		if s, ok := loose["id"].(string); ok && idOK(s) {
			pe.ID = s
		}
		if s, ok := loose["reply_to"].(string); ok && strings.HasPrefix(s, replyPrefix) && len(s) <= 512 {
			pe.ReplyTo = s
		}
	}
	fail := func(e error) (v1.Command, error) { pe.Err = e; return v1.Command{}, pe }
	if err != nil {
		return fail(errdefs.Invalid("bad command JSON: %v", err))
	}
	var c v1.Command
	if w.Op == nil {
		return fail(errdefs.Invalid("command has no op"))
	}
	c.Op = *w.Op
	if w.ID != nil {
		if !idOK(*w.ID) {
			return fail(errdefs.Invalid("id %q: want 1 to 128 characters of [A-Za-z0-9-_.:]", *w.ID))
		}
		c.ID = *w.ID
	}
	if w.ReplyTo != nil {
		if !strings.HasPrefix(*w.ReplyTo, replyPrefix) || len(*w.ReplyTo) > 512 || len(*w.ReplyTo) == len(replyPrefix) {
			return fail(errdefs.Invalid("reply_to %q must be a key under %q", *w.ReplyTo, replyPrefix))
		}
		c.ReplyTo = *w.ReplyTo
	}
	if w.PID != nil {
		if *w.PID <= 0 {
			return fail(errdefs.Invalid("pid %d must be positive", *w.PID))
		}
		c.PID = *w.PID
	}
	if w.PIDStart != nil {
		if w.PID == nil {
			return fail(errdefs.Invalid("pid_start needs pid"))
		}
		c.PIDStart = *w.PIDStart
	}
	if w.Name != nil {
		c.Name = *w.Name
	}
	if w.DType != nil {
		c.DType = *w.DType
	}
	if w.Device != nil {
		d, err := parseDevice(*w.Device)
		if err != nil {
			return fail(err)
		}
		c.Device = d
	}
	switch c.Op {
	case v1.OpCreate:
		if w.DType == nil || w.Shape == nil {
			return fail(errdefs.Invalid("create needs dtype and shape"))
		}
		c.Shape = *w.Shape
		if c.Shape == nil {
			c.Shape = []int64{}
		}
		dt, err := tensor.ParseDType(c.DType)
		if err != nil {
			return fail(err)
		}
		if _, err := tensor.NumBytes(dt, c.Shape, 0); err != nil {
			return fail(err)
		}
	case v1.OpGet, v1.OpRelease:
		if c.PID == 0 {
			return fail(errdefs.Invalid("%s needs the pid that owns the reference", c.Op))
		}
	case v1.OpDelete, v1.OpStat, v1.OpList:
	default:
		return fail(errdefs.Invalid("unknown op %q (want create, get, release, delete, list or stat)", c.Op))
	}
	if c.Op != v1.OpList {
		if err := tensor.ValidateName(c.Name); err != nil {
			return fail(err)
		}
	}
	if w.Prefix != nil || w.Limit != nil || w.Cursor != nil {
		if c.Op != v1.OpList {
			return fail(errdefs.Invalid("%s takes no prefix, limit or cursor", c.Op))
		}
		if w.Limit != nil && *w.Limit < 0 {
			return fail(errdefs.Invalid("limit %d is negative", *w.Limit))
		}
		c.Prefix, c.Limit, c.Cursor = deref(w.Prefix), derefInt(w.Limit), deref(w.Cursor)
	}
	if c.Op != v1.OpCreate && (w.Shape != nil || w.DType != nil) {
		return fail(errdefs.Invalid("%s takes no dtype or shape", c.Op))
	}
	return c, nil
}

func parseDevice(raw json.RawMessage) (string, error) {
	var n int
	if err := json.Unmarshal(raw, &n); err == nil {
		if n < 0 {
			return "", errdefs.Invalid("device %d is negative", n)
		}
		return strconv.Itoa(n), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil && s != "" && len(s) <= 128 {
		return s, nil
	}
	return "", errdefs.Invalid("device must be an ordinal or a UUID string, not %s", string(raw))
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt(n *int) int {
	if n == nil {
		return 0
	}
	return *n
}
