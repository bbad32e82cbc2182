package v1

import "strconv"

// decodePlain decodes a request body as clients write it: Request's fields
// in their declared order, no whitespace, strings without escapes, plain
// integers. It needs no reflection, which the agent would otherwise pay on
// every request. ok is false for any other body, which then goes through the
// strict decoder; for the bodies it accepts, the result is the strict
// decoder's (FuzzDecodePlain checks).
func decodePlain(b []byte) (req Request, ok bool) {
	p := plainParser{b: b}
	if !p.lit(`{"id":`) {
		return Request{}, false
	}
	if req.ID, ok = p.uint(); !ok {
		return Request{}, false
	}
	if !p.lit(`,"op":`) {
		return Request{}, false
	}
	if req.Op, ok = p.str(); !ok {
		return Request{}, false
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{`,"name":`, &req.Name}, {`,"dtype":`, &req.DType}} {
		if p.lit(f.key) {
			if *f.dst, ok = p.str(); !ok {
				return Request{}, false
			}
		}
	}
	if p.lit(`,"shape":`) {
		if req.Shape, ok = p.ints(); !ok {
			return Request{}, false
		}
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{`,"device":`, &req.Device}, {`,"client":`, &req.Client}, {`,"event":`, &req.Event}, {`,"segment":`, &req.Segment}, {`,"prefix":`, &req.Prefix}} {
		if p.lit(f.key) {
			if *f.dst, ok = p.str(); !ok {
				return Request{}, false
			}
		}
	}
	if p.lit(`,"limit":`) {
		n, ok := p.int()
		if !ok {
			return Request{}, false
		}
		req.Limit = n
	}
	if p.lit(`,"cursor":`) {
		if req.Cursor, ok = p.str(); !ok {
			return Request{}, false
		}
	}
	if !p.lit("}") || p.i != len(b) {
		return Request{}, false
	}
	return req, true
}

type plainParser struct {
	b []byte
	i int
}

// lit consumes s if the input continues with it.
func (p *plainParser) lit(s string) bool {
	if len(p.b)-p.i < len(s) || string(p.b[p.i:p.i+len(s)]) != s {
		return false
	}
	p.i += len(s)
	return true
}

// str consumes a string of printable ASCII without quotes or backslashes:
// its JSON value is its bytes.
func (p *plainParser) str() (string, bool) {
	if !p.lit(`"`) {
		return "", false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		c := p.b[p.i]
		if c == '"' {
			s := string(p.b[start:p.i])
			p.i++
			return s, true
		}
		if c < 0x20 || c > 0x7e || c == '\\' {
			return "", false
		}
	}
	return "", false
}

// number consumes a JSON integer: an optional minus, then 0 or a digit
// string without a leading zero.
func (p *plainParser) number(signed bool) (string, bool) {
	start := p.i
	if signed && p.i < len(p.b) && p.b[p.i] == '-' {
		p.i++
	}
	digits := p.i
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
	}
	n := p.i - digits
	if n == 0 || (n > 1 && p.b[digits] == '0') {
		return "", false
	}
	return string(p.b[start:p.i]), true
}

func (p *plainParser) uint() (uint64, bool) {
	s, ok := p.number(false)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// int consumes a JSON integer that fits an int.
func (p *plainParser) int() (int, bool) {
	s, ok := p.number(true)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 0)
	return int(v), err == nil
}

// ints consumes an array of integers ([] gives an empty, non-nil slice, as
// the strict decoder does).
func (p *plainParser) ints() ([]int64, bool) {
	if !p.lit("[") {
		return nil, false
	}
	out := []int64{}
	if p.lit("]") {
		return out, true
	}
	for {
		s, ok := p.number(true)
		if !ok {
			return nil, false
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, false
		}
		out = append(out, v)
		if p.lit("]") {
			return out, true
		}
		if !p.lit(",") {
			return nil, false
		}
	}
}
