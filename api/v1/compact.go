package v1

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The compact record layout: an answer that carries one tensor record
// and nothing else (a create's, a get's, a stat's) written as its fields'
// values in a fixed order, separated by CompactSep, after the byte
// CompactMark. A connection gets its answers in it once it asked with
// OpCompactRecords. Python decodes it with one split instead of a JSON
// parse: a create's or a first get's answer arrives at a process whose
// caches the wait emptied, and the parse was the largest part of what the
// client did after the answer came.
const (
	// CompactMark is a compact body's first byte (a JSON body's is '{').
	CompactMark = 'R'
	// CompactSep separates the fields; no field may contain it.
	CompactSep = 0x1f
	// CompactFields is the number of fields: id, the record's 21 fields in
	// Tensor's order (shape as dimensions joined by ','), then the
	// segment ids of the attached descriptors joined by ','.
	CompactFields = 23
)

// AppendCompactResponse appends resp as a response frame in the compact
// record layout. ok is false, and dst is returned as it was, when resp is
// not a successful answer of one tensor record (and descriptors), or when
// a string holds the separator or is not UTF-8, or a segment id holds a
// ',', or the tensor is in pieces; such answers go through AppendResponse.
func AppendCompactResponse(dst []byte, resp *Response) (_ []byte, ok bool) {
	t := resp.Tensor
	if t == nil || !resp.OK || resp.Error != nil || resp.Tensors != nil || resp.Stats != nil || resp.Hello != nil ||
		resp.GC != nil || resp.Trimmed != 0 || resp.Next != "" || resp.Holders != nil || resp.Lost != nil ||
		resp.Pushed != nil || resp.Gone != nil || len(resp.FDs) > MaxFDs || len(t.Pieces) > 0 {
		return dst, false
	}
	start := len(dst)
	out := append(dst, make([]byte, HeaderSize)...)
	out = append(out, CompactMark)
	out = strconv.AppendUint(out, resp.ID, 10)
	ok = true
	str := func(s string) {
		out = append(out, CompactSep)
		if strings.IndexByte(s, CompactSep) >= 0 || !utf8.ValidString(s) {
			ok = false // JSON writes what UTF-8 cannot hold as U+FFFD
		}
		out = append(out, s...)
	}
	num := func(v int64) { out = strconv.AppendInt(append(out, CompactSep), v, 10) }
	unum := func(v uint64) { out = strconv.AppendUint(append(out, CompactSep), v, 10) }
	str(t.Name)
	str(t.UID)
	str(string(t.DType))
	out = append(out, CompactSep)
	for i, d := range t.Shape {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendInt(out, d, 10)
	}
	num(int64(t.Device))
	str(t.DeviceUUID)
	unum(t.Bytes)
	str(string(t.IPCMode))
	str(t.IPCHandle)
	unum(t.Offset)
	str(t.SegmentID)
	unum(t.SegmentSize)
	num(int64(t.OwnerPID))
	num(t.Refcount)
	str(string(t.State))
	str(t.Agent)
	str(t.Node)
	str(t.Tenant)
	str(t.Event)
	num(t.Ctime)
	num(t.Mtime)
	out = append(out, CompactSep)
	for i, id := range resp.FDs {
		if i > 0 {
			out = append(out, ',')
		}
		if id == "" || strings.IndexByte(id, ',') >= 0 || strings.IndexByte(id, CompactSep) >= 0 {
			ok = false
		}
		out = append(out, id...)
	}
	if !ok || len(out)-start-HeaderSize > MaxBody {
		return dst[:start], false
	}
	if _, err := appendHeader(out[start:start], KindResponse, len(resp.FDs), len(out)-start-HeaderSize); err != nil {
		return dst[:start], false
	}
	return out, true
}

// IsCompact reports whether a response body is in the compact record layout.
func IsCompact(body []byte) bool { return len(body) > 0 && body[0] == CompactMark }

// DecodeCompactResponse decodes a body in the compact record layout,
// strictly: the field count, every number and the UTF-8 of every string
// are checked.
func DecodeCompactResponse(body []byte) (*Response, error) {
	if !IsCompact(body) {
		return nil, fmt.Errorf("%w: not a compact record (first byte %q)", ErrFrame, firstByte(body))
	}
	f := bytes.Split(body[1:], []byte{CompactSep})
	if len(f) != CompactFields {
		return nil, fmt.Errorf("%w: compact record of %d fields, want %d", ErrFrame, len(f), CompactFields)
	}
	var bad error
	u := func(i int) uint64 {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil && bad == nil {
			bad = fmt.Errorf("%w: compact record field %d: %w", ErrFrame, i, err)
		}
		return v
	}
	n := func(i int) int64 {
		v, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil && bad == nil {
			bad = fmt.Errorf("%w: compact record field %d: %w", ErrFrame, i, err)
		}
		return v
	}
	s := func(i int) string {
		if !utf8.Valid(f[i]) && bad == nil {
			bad = fmt.Errorf("%w: compact record field %d is not UTF-8", ErrFrame, i)
		}
		return string(f[i])
	}
	shape := []int64{}
	if len(f[4]) > 0 {
		for _, d := range bytes.Split(f[4], []byte{','}) {
			v, err := strconv.ParseInt(string(d), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%w: compact record shape %q: %w", ErrFrame, f[4], err)
			}
			shape = append(shape, v)
		}
	}
	resp := &Response{ID: u(0), OK: true, Tensor: &Tensor{
		Name: s(1), UID: s(2), DType: DType(s(3)), Shape: shape, Device: int(n(5)), DeviceUUID: s(6),
		Bytes: u(7), IPCMode: IPCMode(s(8)), IPCHandle: s(9), Offset: u(10), SegmentID: s(11),
		SegmentSize: u(12), OwnerPID: int(n(13)), Refcount: n(14), State: State(s(15)), Agent: s(16),
		Node: s(17), Tenant: s(18), Event: s(19), Ctime: n(20), Mtime: n(21),
	}}
	if fds := s(22); fds != "" {
		resp.FDs = strings.Split(fds, ",")
		if len(resp.FDs) > MaxFDs || slices.Contains(resp.FDs, "") {
			return nil, fmt.Errorf("%w: compact record's segment ids %q: at most %d, none empty", ErrFrame, fds, MaxFDs)
		}
	}
	if bad != nil {
		return nil, bad
	}
	return resp, nil
}

func firstByte(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return string(b[:1])
}
