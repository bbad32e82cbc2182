// Package tensor holds the rules of a named tensor: accepted dtype
// spellings, shape and size checks, and the name rules. The types
// themselves (v1.DType, v1.Tensor) are the wire API's.
package tensor

import (
	"strings"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

const maxName = 200

// aliases maps every accepted spelling (lower case) to its canonical dtype.
var aliases = map[string]v1.DType{
	"f16": v1.F16, "float16": v1.F16, "half": v1.F16, "fp16": v1.F16,
	"bf16": v1.BF16, "bfloat16": v1.BF16,
	"f32": v1.F32, "float32": v1.F32, "float": v1.F32, "fp32": v1.F32,
	"f64": v1.F64, "float64": v1.F64, "double": v1.F64, "fp64": v1.F64,
	"i8": v1.I8, "int8": v1.I8,
	"i16": v1.I16, "int16": v1.I16, "short": v1.I16,
	"i32": v1.I32, "int32": v1.I32, "int": v1.I32,
	"i64": v1.I64, "int64": v1.I64, "long": v1.I64,
	"u8": v1.U8, "uint8": v1.U8,
	"bool": v1.Bool, "b8": v1.Bool,
	"f8e4m3": v1.F8E4M3, "float8_e4m3fn": v1.F8E4M3, "e4m3": v1.F8E4M3, "fp8_e4m3": v1.F8E4M3,
	"f8e5m2": v1.F8E5M2, "float8_e5m2": v1.F8E5M2, "e5m2": v1.F8E5M2, "fp8_e5m2": v1.F8E5M2,
}

// ParseDType accepts canonical names and common aliases ("float32",
// "torch.float32", "np.float32", "bfloat16"...).
func ParseDType(s string) (v1.DType, error) {
	key := strings.ToLower(strings.TrimSpace(s))
	for _, p := range []string{"torch.", "numpy.", "np.", "cupy.", "cp."} {
		key = strings.TrimPrefix(key, p)
	}
	if d, ok := aliases[key]; ok {
		return d, nil
	}
	return "", errdefs.Invalid("unknown dtype %q (want one of f16 bf16 f32 f64 i8 i16 i32 i64 u8 bool f8e4m3 f8e5m2, or an alias such as float32)", s)
}
