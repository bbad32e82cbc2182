package v1

import (
	"encoding/json"
	"strconv"
)

// appendPlainResponse appends resp as encoding/json would marshal it, for
// the answers the agent gives most (a create's or a get's tensor, an empty
// ok, a page of a list), without reflection: json.Marshal took a few microseconds of every
// create and get. ok is false for any other response, or a string that
// would need escaping; those go through json.Marshal (FuzzPlainResponse
// checks that both write the same bytes).
func appendPlainResponse(dst []byte, resp *Response) (_ []byte, ok bool) {
	if resp.Error != nil || resp.Stats != nil || resp.Hello != nil || resp.GC != nil || resp.Trimmed != 0 || resp.Holders != nil || resp.Lost != nil || resp.Pushed != nil || resp.Gone != nil {
		return dst, false
	}
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendUint(dst, resp.ID, 10)
	dst = append(dst, `,"ok":`...)
	dst = strconv.AppendBool(dst, resp.OK)
	if t := resp.Tensor; t != nil {
		if dst, ok = appendPlainInfo(append(dst, `,"tensor":`...), t); !ok {
			return dst, false
		}
	}
	if resp.Tensors != nil {
		if len(resp.Tensors) == 0 {
			return dst, false // omitempty drops an empty list: the general encoder says so
		}
		dst = append(dst, `,"tensors":[`...)
		for i := range resp.Tensors {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, ok = appendPlainInfo(dst, &resp.Tensors[i]); !ok {
				return dst, false
			}
		}
		dst = append(dst, ']')
	}
	if len(resp.FDs) > 0 {
		dst = append(dst, `,"fds":[`...)
		for i, id := range resp.FDs {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, ok = appendPlainString(dst, id); !ok {
				return dst, false
			}
		}
		dst = append(dst, ']')
	}
	if resp.Next != "" {
		if dst, ok = appendPlainString(append(dst, `,"next":`...), resp.Next); !ok {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// appendPlainInfo writes Tensor's fields in their declared order,
// leaving out the empty omitempty ones, as encoding/json does.
func appendPlainInfo(dst []byte, t *Tensor) (_ []byte, ok bool) {
	str := func(key, v string, omitEmpty bool) {
		if !ok || (omitEmpty && v == "") {
			return
		}
		dst = append(dst, key...)
		dst, ok = appendPlainString(dst, v)
	}
	num := func(key string, v int64) {
		dst = strconv.AppendInt(append(dst, key...), v, 10)
	}
	unum := func(key string, v uint64) {
		dst = strconv.AppendUint(append(dst, key...), v, 10)
	}
	if len(t.Pieces) > 0 {
		return dst, false // rare (large tensors): encoding/json writes them
	}
	ok = true
	str(`{"name":`, t.Name, false)
	str(`,"uid":`, t.UID, false)
	str(`,"dtype":`, string(t.DType), false)
	dst = append(dst, `,"shape":`...)
	if t.Shape == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, d := range t.Shape {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendInt(dst, d, 10)
		}
		dst = append(dst, ']')
	}
	num(`,"device":`, int64(t.Device))
	str(`,"device_uuid":`, t.DeviceUUID, true)
	unum(`,"bytes":`, t.Bytes)
	str(`,"ipc_mode":`, string(t.IPCMode), false)
	str(`,"ipc_handle":`, t.IPCHandle, false)
	unum(`,"offset":`, t.Offset)
	str(`,"segment_id":`, t.SegmentID, false)
	unum(`,"segment_size":`, t.SegmentSize)
	num(`,"owner_pid":`, int64(t.OwnerPID))
	num(`,"refcount":`, t.Refcount)
	str(`,"state":`, string(t.State), false)
	str(`,"agent":`, t.Agent, false)
	str(`,"node":`, t.Node, false)
	str(`,"tenant":`, t.Tenant, true)
	str(`,"event":`, t.Event, true)
	num(`,"ctime":`, t.Ctime)
	num(`,"mtime":`, t.Mtime)
	return append(dst, '}'), ok
}

// appendPlainString quotes s when no byte of it needs escaping in
// encoding/json's output (which also escapes <, > and & and rewrites
// anything outside ASCII it cannot keep as is).
func appendPlainString(dst []byte, s string) (_ []byte, ok bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return dst, false
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), true
}

// AppendTensorJSON appends t as encoding/json marshals it (compact), without
// reflection when it can.
func AppendTensorJSON(dst []byte, t *Tensor) []byte {
	start := len(dst)
	if out, ok := appendPlainInfo(dst, t); ok {
		return out
	}
	b, _ := json.Marshal(t) // a Tensor always marshals
	return append(dst[:start], b...)
}
