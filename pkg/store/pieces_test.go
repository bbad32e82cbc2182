package store_test

import (
	"context"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/pool"
	"github.com/memcuda/memcuda/pkg/store"
)

// pieceBytes are the bytes of a tensor in pieces, read through its
// segments in the store's backend.
func pieceBytes(t *testing.T, st *store.Store, info v1.Tensor) [][]byte {
	t.Helper()
	segs, ok := st.SegmentsOf(info.UID)
	if !ok {
		t.Fatalf("no memory for %s", info.Name)
	}
	byID := map[string]*host.Segment{}
	for _, s := range segs {
		byID[s.ID()] = s.(*host.Segment)
	}
	var out [][]byte
	for _, p := range info.Pieces {
		seg := byID[p.SegmentID]
		if seg == nil {
			t.Fatalf("%s: piece in segment %s, which the store does not list for it", info.Name, p.SegmentID)
		}
		out = append(out, seg.Bytes()[p.Offset:p.Offset+p.Size])
	}
	return out
}

func TestCreateInPiecesAndAdopt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const mib = 1 << 20
	for _, n := range []string{"a", "b", "c", "d"} {
		if _, _, err := f.st.Create(ctx, store.CreateParams{Name: n, DType: "u8", Shape: []int64{12 * mib}, Pieces: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"a", "c"} {
		if _, err := f.st.Delete(ctx, n, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	before := f.st.Stats().Pools[0]
	// 20 MiB fits neither 12 MiB hole; in pieces it takes the two holes, no new segment.
	big, _, err := f.st.Create(ctx, store.CreateParams{Name: "big", DType: "u8", Shape: []int64{20 * mib}, Pieces: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(big.Pieces) != 2 || big.SegmentID != big.Pieces[0].SegmentID || big.Offset != big.Pieces[0].Offset {
		t.Fatalf("20 MiB over two 12 MiB holes: pieces %+v (first at %s+%d)", big.Pieces, big.SegmentID, big.Offset)
	}
	if st := f.st.Stats().Pools[0]; st.SegmentAllocs != before.SegmentAllocs {
		t.Fatalf("a create in pieces made %d segments, want none", st.SegmentAllocs-before.SegmentAllocs)
	}
	var total uint64
	for _, p := range big.Pieces {
		total += p.Size
	}
	if total != big.Bytes {
		t.Fatalf("pieces hold %d bytes of %d", total, big.Bytes)
	}
	if got, err := f.st.Stat(ctx, "big"); err != nil || len(got.Pieces) != 2 || got.Pieces[1] != big.Pieces[1] {
		t.Fatalf("stat from Redis: %+v, %v", got.Pieces, err)
	}
	// New memory is zero, then it takes a pattern across both pieces.
	k := 0
	for _, b := range pieceBytes(t, f.st, big) {
		for j := range b {
			if b[j] != 0 {
				t.Fatalf("byte %d of a new tensor in pieces is %d", k, b[j])
			}
			b[j] = byte(k * 7)
			k++
		}
	}

	// A new instance adopts the segments the pieces link, together.
	be := host.New("t:", "inst2", host.WithDir(f.dir))
	next := store.New(f.reg, be, "inst2", "n1")
	defer next.Close()
	rep, err := next.Adopt(ctx, nil)
	if err != nil || rep.Adopted != 3 || rep.Removed != 0 {
		t.Fatalf("adopt: %+v, %v; want b, d and big adopted", rep, err)
	}
	rec, err := next.Stat(ctx, "big")
	if err != nil || rec.Agent != "inst2" || len(rec.Pieces) != 2 || rec.Pieces[0] != big.Pieces[0] {
		t.Fatalf("adopted record: %+v, %v", rec, err)
	}
	k = 0
	for _, b := range pieceBytes(t, next, rec) {
		for j := range b {
			if b[j] != byte(k*7) {
				t.Fatalf("byte %d is %d after adoption, want %d", k, b[j], byte(k*7))
			}
			k++
		}
	}
	if !next.Pieced("big") || next.Pieced("b") {
		t.Fatal("Pieced is wrong after adoption")
	}
	// Deleting it gives both holes back: a create of 24 MiB in pieces fits
	// in the freed holes with no new segment.
	if _, err := next.Delete(ctx, "big", "", nil); err != nil {
		t.Fatal(err)
	}
	made := next.Stats().Pools[0].SegmentAllocs
	again, _, err := next.Create(ctx, store.CreateParams{Name: "again", DType: "u8", Shape: []int64{24 * mib}, Pieces: true})
	if err != nil || len(again.Pieces) != 2 || next.Stats().Pools[0].SegmentAllocs != made {
		t.Fatalf("24 MiB into the freed holes: %d pieces, %d new segments, %v", len(again.Pieces), next.Stats().Pools[0].SegmentAllocs-made, err)
	}
	for _, b := range pieceBytes(t, next, again) {
		for j := range b {
			if b[j] != 0 {
				t.Fatalf("a reused piece holds %d at %d: not zero-filled", b[j], j)
			}
		}
	}
	// A create that does not ask for pieces never gets them: one new segment.
	if _, err := next.Delete(ctx, "again", "", nil); err != nil {
		t.Fatal(err)
	}
	made = next.Stats().Pools[0].SegmentAllocs
	whole, _, err := next.Create(ctx, store.CreateParams{Name: "whole", DType: "u8", Shape: []int64{24 * mib}})
	if err != nil || len(whole.Pieces) != 0 || next.Stats().Pools[0].SegmentAllocs != made+1 {
		t.Fatalf("create without pieces: %d pieces, %d new segments, %v", len(whole.Pieces), next.Stats().Pools[0].SegmentAllocs-made, err)
	}
}

// gpuLike is the host backend under a GPU backend's mode: what the store
// decides from the mode alone.
type gpuLike struct {
	*host.Backend
	mode v1.IPCMode
}

func (g gpuLike) Mode() v1.IPCMode { return g.mode }

// A GPU maps whole allocations only. On vmm a tensor's pieces abut when
// their segments are mapped whole side by side: a freed segment whole,
// then the head of another (pool's tests check the rule at random). On
// legacy, where a handle opens wherever the driver puts it, a create gets
// one piece whatever it asks.
func TestGPUBackendsGiveWholeSegmentPieces(t *testing.T) {
	for _, mode := range []v1.IPCMode{v1.ModeVMM, v1.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t)
			ctx := context.Background()
			st := store.New(f.reg, gpuLike{host.New("t:", "inst9", host.WithDir(t.TempDir())), mode}, "inst9", "n1", store.WithMaxPieces(8))
			defer st.Close()
			const mib = 1 << 20
			create := func(name string, n int64) v1.Tensor {
				t.Helper()
				info, _, err := st.Create(ctx, store.CreateParams{Name: name, DType: "u8", Shape: []int64{n}, Pieces: true})
				if err != nil {
					t.Fatal(err)
				}
				return info
			}
			for _, n := range []string{"g.a", "g.b", "g.c", "g.d"} {
				create(n, 12*mib)
			}
			for _, n := range []string{"g.a", "g.c"} {
				if _, err := st.Delete(ctx, n, "", nil); err != nil {
					t.Fatal(err)
				}
			}
			made := st.Stats().Pools[0].SegmentAllocs
			big := create("g.big", 20*mib)
			grown := st.Stats().Pools[0].SegmentAllocs - made
			if mode == v1.ModeLegacy {
				if len(big.Pieces) != 0 || st.Pieced("g.big") || grown != 1 {
					t.Fatalf("legacy: %d pieces, %d new segments; want one piece in a new segment", len(big.Pieces), grown)
				}
				return
			}
			if len(big.Pieces) != 2 || grown != 0 {
				t.Fatalf("vmm: %d pieces, %d new segments; want 2 over the freed segments", len(big.Pieces), grown)
			}
			first, last := big.Pieces[0], big.Pieces[1]
			if first.Offset != 0 || first.Size != first.SegmentSize || last.Offset != 0 || last.Size != 8*mib {
				t.Fatalf("vmm pieces %+v: want a whole segment, then the first 8 MiB of another", big.Pieces)
			}
		})
	}
}

// On vmm with pieces, a medium tensor of more than a granule gets a segment
// of its own size (pool.WithWholeMaps); with one piece per tensor, or on
// legacy, it shares a 20 MiB segment.
func TestVMMSegmentSizesFollowPieces(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		mode   v1.IPCMode
		pieces int
		want   uint64
	}{
		{v1.ModeVMM, 8, 3 * mib}, // whole granules of the host backend under it
		{v1.ModeVMM, 1, pool.LargeSegment},
		{v1.ModeLegacy, 8, pool.LargeSegment},
	} {
		f := newFixture(t)
		st := store.New(f.reg, gpuLike{host.New("t:", "inst9", host.WithDir(t.TempDir())), tc.mode}, "inst9", "n1", store.WithMaxPieces(tc.pieces))
		info, _, err := st.Create(context.Background(), store.CreateParams{Name: "m", DType: "u8", Shape: []int64{3 * mib}, Pieces: true})
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		if info.SegmentSize != tc.want {
			t.Errorf("%s, up to %d pieces: a 3 MiB tensor's segment is %d bytes, want %d", tc.mode, tc.pieces, info.SegmentSize, tc.want)
		}
	}
}
