package tensor

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

func TestParseDType(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want v1.DType
	}{
		{"f32", v1.F32}, {"float32", v1.F32}, {"torch.float32", v1.F32}, {"np.float32", v1.F32}, {"FLOAT", v1.F32},
		{"bf16", v1.BF16}, {"torch.bfloat16", v1.BF16}, {"half", v1.F16}, {"float16", v1.F16}, {"double", v1.F64},
		{"int8", v1.I8}, {"short", v1.I16}, {"int", v1.I32}, {"torch.int64", v1.I64}, {"long", v1.I64}, {"uint8", v1.U8},
		{"bool", v1.Bool}, {"torch.bool", v1.Bool}, {"float8_e4m3fn", v1.F8E4M3}, {"torch.float8_e5m2", v1.F8E5M2}, {" f16 ", v1.F16},
	} {
		got, err := ParseDType(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDType(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "f31", "complex64", "torch.", "float32x"} {
		if _, err := ParseDType(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseDType(%q) err = %v, want invalid argument", bad, err)
		}
	}
}

func TestNumBytes(t *testing.T) {
	for _, tc := range []struct {
		d     v1.DType
		shape []int64
		limit uint64
		want  uint64
		err   string
	}{
		{v1.F32, []int64{2, 3}, 0, 24, ""},
		{v1.BF16, []int64{4096, 4096}, 0, 32 << 20, ""},
		{v1.F64, []int64{}, 0, 8, ""},    // scalar
		{v1.I8, []int64{0, 5}, 0, 0, ""}, // empty tensor
		{v1.F8E4M3, []int64{1, 1, 1, 1, 1, 1, 1, 7}, 0, 7, ""},
		{v1.F32, []int64{1, 1, 1, 1, 1, 1, 1, 1, 1}, 0, 0, "at most 8"},
		{v1.F32, []int64{2, -1}, 0, 0, "negative"},
		{v1.F32, []int64{1 << 40, 1 << 40}, 0, 0, "overflows"},
		{v1.F32, []int64{1 << 31, 1 << 31}, 0, 0, "overflows"},
		{v1.F32, []int64{1024}, 4095, 0, "over the device limit"},
		{"f31", []int64{1}, 0, 0, "unknown dtype"},
	} {
		got, err := NumBytes(tc.d, tc.shape, tc.limit)
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("NumBytes(%s, %v) = %d, %v; want %d", tc.d, tc.shape, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("NumBytes(%s, %v) err = %v, want invalid argument with %q", tc.d, tc.shape, err, tc.err)
		}
	}
}

func TestValidateName(t *testing.T) {
	good := []string{"w", "model.layer0.weight", "ns/model:v2", "a@b+c=d-e", "_x", strings.Repeat("a", 200)}
	bad := []string{"", " ", "a b", "../etc", "a/../b", "a//b", "-flag", ".hidden", "tab\t", "new\nline", "é", "a*", "a\x00b", strings.Repeat("a", 201), "{curly}"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want ok", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateName(n); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateName(%q) = %v, want invalid argument", n, err)
		}
	}
}

// The rule as regular expressions: ValidateName's byte loop must agree.
var (
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:/@+=-]*$`)
	nameDotsRE = regexp.MustCompile(`\.\.|//`)
)

func FuzzValidateName(f *testing.F) {
	for _, n := range []string{"w", "a..b", "a//b", "a/./b", "_", "-", "a-", "ns/m:v2", "é", "a\x00", strings.Repeat("z", 200), strings.Repeat("z", 201)} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := name != "" && len(name) <= maxName && nameRE.MatchString(name) && !nameDotsRE.MatchString(name)
		if err := ValidateName(name); (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v, the rule says valid=%v", name, err, want)
		}
	})
}

func TestFormatShape(t *testing.T) {
	if s := FormatShape([]int64{2, 3}); s != "[2,3]" {
		t.Fatal(s)
	}
	if s := FormatShape(nil); s != "[]" {
		t.Fatal(s)
	}
}
