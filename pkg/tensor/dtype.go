// Package tensor holds what a named tensor is: its dtype, shape, name rules and
// the metadata record the registry stores.
package tensor

import (
	"strings"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// DType is a canonical element type name, as stored in the registry (the seed's
// short names: f32, i8...).
type DType string

// The supported element types.
const (
	F16     DType = "f16"
	BF16    DType = "bf16"
	F32     DType = "f32"
	F64     DType = "f64"
	I8      DType = "i8"
	I16     DType = "i16"
	I32     DType = "i32"
	I64     DType = "i64"
	U8      DType = "u8"
	Bool    DType = "bool"
	F8E4M3  DType = "f8e4m3"
	F8E5M2  DType = "f8e5m2"
	maxName       = 200
)

var itemSizes = map[DType]uint64{
	F16: 2, BF16: 2, F32: 4, F64: 8, I8: 1, I16: 2, I32: 4, I64: 8, U8: 1, Bool: 1, F8E4M3: 1, F8E5M2: 1,
}

// aliases maps every accepted spelling (lower case) to its canonical dtype.
var aliases = map[string]DType{
	"f16": F16, "float16": F16, "half": F16, "fp16": F16,
	"bf16": BF16, "bfloat16": BF16,
	"f32": F32, "float32": F32, "float": F32, "fp32": F32,
	"f64": F64, "float64": F64, "double": F64, "fp64": F64,
	"i8": I8, "int8": I8,
	"i16": I16, "int16": I16, "short": I16,
	"i32": I32, "int32": I32, "int": I32,
	"i64": I64, "int64": I64, "long": I64,
	"u8": U8, "uint8": U8,
	"bool": Bool, "b8": Bool,
	"f8e4m3": F8E4M3, "float8_e4m3fn": F8E4M3, "e4m3": F8E4M3, "fp8_e4m3": F8E4M3,
	"f8e5m2": F8E5M2, "float8_e5m2": F8E5M2, "e5m2": F8E5M2, "fp8_e5m2": F8E5M2,
}

// ParseDType accepts canonical names and common aliases ("float32",
// "torch.float32", "np.float32", "bfloat16"...).
func ParseDType(s string) (DType, error) {
	key := strings.ToLower(strings.TrimSpace(s))
	for _, p := range []string{"torch.", "numpy.", "np.", "cupy.", "cp."} {
		key = strings.TrimPrefix(key, p)
	}
	if d, ok := aliases[key]; ok {
		return d, nil
	}
	return "", errdefs.Invalid("unknown dtype %q (want one of f16 bf16 f32 f64 i8 i16 i32 i64 u8 bool f8e4m3 f8e5m2, or an alias such as float32)", s)
}

// ItemSize is the size of one element in bytes.
func (d DType) ItemSize() uint64 { return itemSizes[d] }

// Valid reports whether d is a canonical dtype.
func (d DType) Valid() bool { _, ok := itemSizes[d]; return ok }
