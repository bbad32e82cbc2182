package queue

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

type commandCase struct {
	Case     string `json:"case"`
	Raw      string `json:"raw"`
	Code     string `json:"code"`
	Contains string `json:"contains"`
	ReplyTo  string `json:"reply_to"`
	ID       string `json:"id"`
}

func loadCases(t testing.TB) []commandCase {
	b, err := os.ReadFile("testdata/commands.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []commandCase
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	return cases
}

func TestParse(t *testing.T) {
	for _, tc := range loadCases(t) {
		t.Run(tc.Case, func(t *testing.T) {
			c, err := Parse([]byte(tc.Raw), "tensor:reply:")
			if got := errdefs.Code(err); got != tc.Code {
				t.Fatalf("code %s (%v), want %s", got, err, tc.Code)
			}
			if err == nil {
				if c.Op == "" || (c.Op != v1.OpList && c.Name == "") {
					t.Fatalf("parsed %+v", c)
				}
				return
			}
			if !strings.Contains(err.Error(), tc.Contains) {
				t.Fatalf("error %q does not mention %q", err, tc.Contains)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a ParseError", err)
			}
			if pe.ReplyTo != tc.ReplyTo || pe.ID != tc.ID {
				t.Fatalf("salvaged reply_to=%q id=%q, want %q %q", pe.ReplyTo, pe.ID, tc.ReplyTo, tc.ID)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"op":"create","name":"s","dtype":"float32","shape":[],"device":"3"}`), "p:reply:")
	if err != nil {
		t.Fatal(err)
	}
	if c.Shape == nil || len(c.Shape) != 0 || c.Device != "3" {
		t.Fatalf("%+v", c)
	}
	if _, err := Parse([]byte(strings.Repeat(" ", MaxCommandSize+1)), "p:"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("oversized command: %v", err)
	}
}

// FuzzParse: no input panics, every error is invalid_argument, and what
// parses round-trips through JSON to the same command.
func FuzzParse(f *testing.F) {
	for _, tc := range loadCases(f) {
		f.Add([]byte(tc.Raw))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Parse(raw, "tensor:reply:")
		if err != nil {
			if errdefs.Code(err) != errdefs.CodeInvalidArgument {
				t.Fatalf("error class %s for %q", errdefs.Code(err), raw)
			}
			return
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Parse(b, "tensor:reply:")
		if err != nil {
			t.Fatalf("re-encoded command %s does not parse: %v", b, err)
		}
		if c2.Op != c.Op || c2.Name != c.Name || c2.ID != c.ID || len(c2.Shape) != len(c.Shape) {
			t.Fatalf("round trip changed %+v into %+v", c, c2)
		}
	})
}
