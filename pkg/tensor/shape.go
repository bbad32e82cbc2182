package tensor

import (
	"math/bits"
	"strconv"
	"strings"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// MaxDims is the largest rank accepted.
const MaxDims = 8

// NumBytes validates shape and returns the byte size of a tensor of dtype d.
// It rejects negative dimensions, ranks over MaxDims and sizes that overflow or
// exceed limit (0 means no limit) before anything is allocated.
func NumBytes(d v1.DType, shape []int64, limit uint64) (uint64, error) {
	if !d.Valid() {
		return 0, errdefs.Invalid("unknown dtype %q", string(d))
	}
	if len(shape) > MaxDims {
		return 0, errdefs.Invalid("shape has %d dims, at most %d are supported", len(shape), MaxDims)
	}
	n := d.ItemSize()
	for i, dim := range shape {
		if dim < 0 {
			return 0, errdefs.Invalid("shape[%d] = %d is negative", i, dim)
		}
		hi, lo := bits.Mul64(n, uint64(dim))
		if hi != 0 || lo > 1<<62 {
			return 0, errdefs.Invalid("shape %s of %s overflows the address space", FormatShape(shape), d)
		}
		n = lo
	}
	if limit > 0 && n > limit {
		return 0, errdefs.Invalid("shape %s of %s needs %d bytes, over the device limit of %d", FormatShape(shape), d, n, limit)
	}
	return n, nil
}

// FormatShape writes a shape as JSON does: [2,3].
func FormatShape(shape []int64) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range shape {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(d, 10))
	}
	b.WriteByte(']')
	return b.String()
}

// nameByte marks the bytes a name may hold; nameStart those it may begin with.
var nameByte, nameStart [256]bool

func init() {
	for c := 0; c < 256; c++ {
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		nameStart[c] = alnum || c == '_'
		nameByte[c] = nameStart[c] || strings.IndexByte(".:/@+=-", byte(c)) >= 0
	}
}

// ValidateName checks a tensor name: 1 to 200 characters of letters, digits
// and _ . : / @ + = -, not starting with punctuation other than _, and no "..".
// Names become Redis keys and file names, so anything else is refused.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errdefs.Invalid("tensor name is empty")
	case len(name) > maxName:
		return errdefs.Invalid("tensor name is %d bytes long, at most %d are allowed", len(name), maxName)
	}
	// A byte loop, not a regular expression: every create and first get
	// checks a name, and the expression took microseconds of the agent's
	// part of a create.
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case !nameByte[c] || (i == 0 && !nameStart[c]):
			return errdefs.Invalid("tensor name %q has characters outside [A-Za-z0-9_.:/@+=-] or starts with punctuation", name)
		case i > 0 && (c == '.' || c == '/') && name[i-1] == c:
			return errdefs.Invalid("tensor name %q contains '..' or '//'", name)
		}
	}
	return nil
}
