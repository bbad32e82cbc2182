package server_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// A connection that sent pieces may be given a tensor in pieces, and gets
// the descriptors of every segment of it it lacks with the record; one that
// did not never gets pieces, and is refused a tensor in pieces before any
// reference is taken.
func TestPieces(t *testing.T) {
	sock, st := startServer(t, nil, true)
	p, q, r := dialPeer(t, sock), dialPeer(t, sock), dialPeer(t, sock)
	for _, c := range []rawPeer{p, q, r} {
		if h, _ := c.call(&v1.Request{ID: 1, Op: v1.OpHello}); h.Error != nil || !slices.Contains(h.Hello.Features, v1.OpPieces) {
			t.Fatalf("hello: %+v", h)
		}
	}
	for _, c := range []rawPeer{p, r} {
		if resp, _ := c.call(&v1.Request{ID: 2, Op: v1.OpPieces}); resp.Error != nil {
			t.Fatalf("pieces: %+v", resp.Error)
		}
	}
	const mib = 1 << 20
	for i, n := range []string{"a", "b", "c", "d"} {
		if resp, _ := p.call(&v1.Request{ID: uint64(10 + i), Op: v1.OpCreate, Name: n, DType: "u8", Shape: []int64{12 * mib}}); resp.Error != nil {
			t.Fatal(resp.Error)
		}
		p.call(&v1.Request{ID: uint64(20 + i), Op: v1.OpRelease, Name: n})
	}
	for _, n := range []string{"a", "c"} {
		if resp, _ := p.call(&v1.Request{ID: 30, Op: v1.OpDelete, Name: n}); resp.Error != nil {
			t.Fatal(resp.Error)
		}
	}
	big, _ := p.call(&v1.Request{ID: 31, Op: v1.OpCreate, Name: "big", DType: "u8", Shape: []int64{20 * mib}})
	if big.Error != nil || len(big.Tensor.Pieces) != 2 {
		t.Fatalf("create in pieces: %+v", big)
	}
	if len(big.FDs) != 0 {
		t.Fatalf("the creator had both segments, yet got descriptors %v", big.FDs)
	}
	// A connection new to both segments gets both descriptors with the record.
	frame, _ := v1.EncodeRequest(&v1.Request{ID: 3, Op: v1.OpGet, Name: "big"})
	r.c.Write(frame)
	got, fds := r.read()
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	want := []string{big.Tensor.Pieces[0].SegmentID, big.Tensor.Pieces[1].SegmentID}
	if got.Error != nil || !slices.Equal(got.FDs, want) || len(fds) != 2 {
		t.Fatalf("get in pieces: %+v with %d descriptors; want %v", got, len(fds), want)
	}
	for i, fd := range fds {
		var s unix.Stat_t
		if err := unix.Fstat(fd, &s); err != nil || uint64(s.Size) != big.Tensor.Pieces[i].SegmentSize {
			t.Fatalf("descriptor %d: size %d, want segment %s's %d", i, s.Size, want[i], big.Tensor.Pieces[i].SegmentSize)
		}
	}
	holders := func() int64 {
		h, err := st.Holders(t.Context(), "big")
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, c := range h {
			n += c
		}
		return n
	}
	before := holders()
	// q never sent pieces: its get and its create of the name are refused,
	// and take no reference.
	for _, req := range []*v1.Request{
		{ID: 4, Op: v1.OpGet, Name: "big"},
		{ID: 5, Op: v1.OpCreate, Name: "big", DType: "u8", Shape: []int64{20 * mib}},
	} {
		resp, _ := q.call(req)
		if resp.Error == nil || !errors.Is(errdefs.FromCode(resp.Error.Code, ""), errdefs.ErrFailedPrecondition) {
			t.Fatalf("%s of a tensor in pieces without pieces: %+v", req.Op, resp)
		}
	}
	if n := holders(); n != before {
		t.Fatalf("refused requests changed the references: %d, was %d", n, before)
	}
	if resp, _ := q.call(&v1.Request{ID: 6, Op: v1.OpStat, Name: "big"}); resp.Error != nil || len(resp.Tensor.Pieces) != 2 {
		t.Fatalf("stat is a record, not a mapping: %+v", resp)
	}
	// The Go client never sends pieces: refused the same way.
	gc, err := client.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	if _, err := gc.Get(t.Context(), "big"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "pieces") {
		t.Fatalf("the Go client's get of a tensor in pieces: %v", err)
	}
	// q's own create of the same size gets one piece: a new segment.
	own, _ := q.call(&v1.Request{ID: 7, Op: v1.OpCreate, Name: "own", DType: "u8", Shape: []int64{20 * mib}})
	if own.Error != nil || len(own.Tensor.Pieces) != 0 {
		t.Fatalf("create without pieces: %+v", own)
	}
}
