package v1

import (
	"reflect"
	"strings"
	"testing"
)

// piecesText is also python/tests/test_pieces.py's: both read it alike.
const piecesText = "vmm.a1.5:20971520:4194304:8388608,vmm.a1.9:20971520:0:6291456"

func TestPiecesText(t *testing.T) {
	want := []Piece{{SegmentID: "vmm.a1.5", SegmentSize: 20971520, Offset: 4194304, Size: 8388608},
		{SegmentID: "vmm.a1.9", SegmentSize: 20971520, Offset: 0, Size: 6291456}}
	got, err := ParsePieces(piecesText)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParsePieces(%q) = %v, %v; want %v", piecesText, got, err, want)
	}
	if s := FormatPieces(want); s != piecesText {
		t.Fatalf("FormatPieces = %q, want %q", s, piecesText)
	}
	if p, err := ParsePieces(""); err != nil || p != nil {
		t.Fatalf(`ParsePieces("") = %v, %v`, p, err)
	}
	for _, bad := range []string{
		"vmm.a1.5:20971520:4194304",               // a field short
		":20971520:0:2097152",                     // no segment id
		"vmm.a1.5:20971520:x:2097152",             // not a number
		"vmm.a1.5:2097152:0:4194304",              // past the segment's end
		"vmm.a1.5:2097152:0:0",                    // empty
		"vmm.a1.5:1:18446744073709551615:2",       // offset+size wraps
		strings.Repeat("s:2:0:2,", 8) + "s:2:0:2", // more than MaxPieces
	} {
		if _, err := ParsePieces(bad); err == nil {
			t.Errorf("ParsePieces(%q) accepted", bad)
		}
	}
}

func TestTensorSegments(t *testing.T) {
	one := Tensor{SegmentID: "a"}
	if s := one.Segments(); !reflect.DeepEqual(s, []string{"a"}) {
		t.Fatalf("one piece: %v", s)
	}
	many := Tensor{SegmentID: "a", Pieces: []Piece{{SegmentID: "a"}, {SegmentID: "b"}, {SegmentID: "a"}, {SegmentID: "c"}}}
	if s := many.Segments(); !reflect.DeepEqual(s, []string{"a", "b", "c"}) {
		t.Fatalf("pieces: %v", s)
	}
}
