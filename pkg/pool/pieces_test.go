package pool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
)

const gran = 2 << 20

// checkPieces verifies what a mapping of pieces side by side needs: at most
// max pieces, each starting on a granule of its segment, every one but the
// last whole granules, their requests summing to n.
func checkPieces(t *testing.T, bs []*Block[Segment], n uint64, max int) {
	t.Helper()
	if len(bs) == 0 || len(bs) > max {
		t.Fatalf("%d pieces for %d bytes, bound %d", len(bs), n, max)
	}
	var asked, have uint64
	for i, b := range bs {
		if !b.allocated {
			t.Fatalf("piece %d is not allocated", i)
		}
		if len(bs) > 1 {
			if b.offset%gran != 0 {
				t.Fatalf("piece %d starts at %d, not on a granule", i, b.offset)
			}
			if i < len(bs)-1 && b.size%gran != 0 {
				t.Fatalf("piece %d of %d bytes is not whole granules", i, b.size)
			}
		}
		asked += b.requested
		have += b.size
	}
	if asked != n || have < n {
		t.Fatalf("pieces ask %d and hold %d bytes for a request of %d", asked, have, n)
	}
}

func TestAllocPiecesFromHoles(t *testing.T) {
	src := &fakeSource{}
	p := New(src, WithGranularity(gran), WithCacheSlack(10))
	ctx := context.Background()
	var blocks [][]*Block[Segment]
	for i := 0; i < 4; i++ {
		bs, err := p.AllocPieces(ctx, 12<<20, 8)
		if err != nil {
			t.Fatal(err)
		}
		checkPieces(t, bs, 12<<20, 8)
		blocks = append(blocks, bs)
	}
	if src.made != 4 {
		t.Fatalf("%d segments for four 12 MiB tensors, want 4", src.made)
	}
	// Free the first and third: two 12 MiB holes, neither holding 20 MiB.
	for _, i := range []int{0, 2} {
		for _, b := range blocks[i] {
			p.Free(b)
		}
	}
	bs, err := p.AllocPieces(ctx, 20<<20, 8)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, bs, 20<<20, 8)
	check(t, p)
	if len(bs) != 2 || src.made != 4 {
		t.Fatalf("20 MiB over two 12 MiB holes: %d pieces, %d segments made; want 2 pieces and no new segment", len(bs), src.made)
	}
	if bs[0].seg == bs[1].seg {
		t.Fatal("both pieces in one segment")
	}
	// Everything freed: every segment is whole again and trim gives it all back.
	for _, b := range append(bs, append(blocks[1], blocks[3]...)...) {
		p.Free(b)
	}
	check(t, p)
	if _, err := p.Trim(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Reserved != 0 || src.released != src.made {
		t.Fatalf("after freeing all and trimming: reserved %d, %d of %d segments released", st.Reserved, src.released, src.made)
	}
}

func TestAllocPiecesBoundGrowsTheRest(t *testing.T) {
	src := &fakeSource{}
	p := New(src, WithGranularity(gran), WithCacheSlack(10))
	ctx := context.Background()
	// Ten 4 MiB holes in 20 MiB medium segments: 4 MiB blocks, every other freed.
	var all [][]*Block[Segment]
	for i := 0; i < 20; i++ {
		bs, err := p.AllocPieces(ctx, 4<<20, 4)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, bs)
	}
	for i := 0; i < 20; i += 2 {
		for _, b := range all[i] {
			p.Free(b)
		}
	}
	made := src.made
	bs, err := p.AllocPieces(ctx, 30<<20, 4)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, bs, 30<<20, 4)
	check(t, p)
	if len(bs) != 4 || src.made != made+1 {
		t.Fatalf("30 MiB over small holes, bound 4: %d pieces, %d new segments; want 4 pieces, one new segment for the rest", len(bs), src.made-made)
	}
	last := bs[len(bs)-1]
	if got, want := last.seg.size, uint64(30<<20)-(bs[0].size+bs[1].size+bs[2].size); got != want {
		t.Fatalf("the rest's segment is %d bytes, want %d", got, want)
	}
}

func TestAllocPiecesSmallAndOneFit(t *testing.T) {
	src := &fakeSource{}
	p := New(src, WithGranularity(gran))
	ctx := context.Background()
	bs, err := p.AllocPieces(ctx, 4096, 8)
	if err != nil || len(bs) != 1 || bs[0].seg.class != classSmall {
		t.Fatalf("a small request: %v, %d pieces", err, len(bs))
	}
	big, err := p.AllocPieces(ctx, 40<<20, 8)
	if err != nil || len(big) != 1 {
		t.Fatalf("a large request into an empty pool: %v, %d pieces", err, len(big))
	}
	p.Free(big[0])
	// A smaller large request fits the freed 40 MiB: one piece, and the rest
	// split off at a granule so that it stays usable.
	one, err := p.AllocPieces(ctx, 15<<20+1000, 8)
	if err != nil || len(one) != 1 || src.made != 2 {
		t.Fatalf("one fitting block: %v, %d pieces, %d segments", err, len(one), src.made)
	}
	if one[0].size != 16<<20 {
		t.Fatalf("the fitting block is %d bytes, want it cut at the next granule (16 MiB)", one[0].size)
	}
	check(t, p)
	if _, err := p.AllocPieces(ctx, 1<<63, 8); err == nil {
		t.Fatal("a request past 2^62 bytes was accepted")
	}
}

// checkWholeMaps verifies what WithWholeMaps promises: the pieces abut
// when their segments are mapped whole one after another.
func checkWholeMaps(t *testing.T, bs []*Block[Segment]) {
	t.Helper()
	for i, b := range bs {
		if i > 0 && b.offset != 0 {
			t.Fatalf("piece %d of %d starts at %d of its segment, not at its start", i, len(bs), b.offset)
		}
		if i < len(bs)-1 && b.offset+b.size != b.seg.size {
			t.Fatalf("piece %d of %d ends at %d of its %d-byte segment, not at its end", i, len(bs), b.offset+b.size, b.seg.size)
		}
	}
}

func TestAllocPiecesWholeMaps(t *testing.T) {
	src := &fakeSource{}
	p := New(src, WithGranularity(gran), WithCacheSlack(10), WithWholeMaps())
	ctx := context.Background()
	alloc := func(n uint64) []*Block[Segment] {
		t.Helper()
		bs, err := p.AllocPieces(ctx, n, 8)
		if err != nil {
			t.Fatal(err)
		}
		checkPieces(t, bs, n, 8)
		checkWholeMaps(t, bs)
		return bs
	}
	free := func(bs []*Block[Segment]) {
		for _, b := range bs {
			p.Free(b)
		}
	}
	// Three segments: A holds 8 MiB then 8 MiB, B 12 MiB, C 10 MiB then 6 MiB.
	a, b, c := alloc(16<<20), alloc(12<<20), alloc(16<<20)
	free(a)
	free(c)
	a1, a2 := alloc(8<<20), alloc(8<<20)
	c1, c2 := alloc(10<<20), alloc(6<<20)
	if a1[0].seg != a2[0].seg || c1[0].seg != c2[0].seg || src.made != 3 {
		t.Fatalf("setup: %d segments, want 3 with two tensors in the first and last", src.made)
	}
	// Free A's tail, all of B and C's head: 8 + 12 + 10 MiB free, in no
	// single block, and the middle of A or the tail of C cannot be used.
	free(a2)
	free(b)
	free(c1)
	got := alloc(28 << 20)
	if len(got) != 3 || src.made != 3 || got[0].seg != a1[0].seg || got[1].seg != b[0].seg || got[2].seg != c1[0].seg {
		t.Fatalf("28 MiB over A's tail, B and C's head: %d pieces, %d segments made", len(got), src.made)
	}
	check(t, p)
	// A head that is too small is left out: the rest comes from a new segment.
	free(got)
	free(c2)
	got = alloc(40 << 20) // A's tail 8, B 12, C whole 16: 36, so 4 MiB more
	if src.made != 4 || got[len(got)-1].seg.size != 4<<20 {
		t.Fatalf("40 MiB over 36 free: %d segments made, last piece's segment %d bytes; want a 4 MiB fourth", src.made, got[len(got)-1].seg.size)
	}
	check(t, p)
	free(got)
	free(a1)
	check(t, p)
}

func TestAllocPiecesRandomOps(t *testing.T) {
	t.Run("parts", func(t *testing.T) { randomPieces(t, false) })
	t.Run("whole-maps", func(t *testing.T) { randomPieces(t, true) })
	t.Run("whole-maps-min-growth", func(t *testing.T) { randomPieces(t, true, WithMinGrowth(64<<20)) })
}

func randomPieces(t *testing.T, whole bool, extra ...Option) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			src := &fakeSource{}
			opts := []Option{WithGranularity(gran)}
			if whole {
				opts = append(opts, WithWholeMaps())
			}
			p := New(src, append(opts, extra...)...)
			ctx := context.Background()
			var live [][]*Block[Segment]
			for i := 0; i < 3000; i++ {
				if len(live) > 0 && rng.IntN(100) < 45 {
					j := rng.IntN(len(live))
					for _, b := range live[j] {
						p.Free(b)
					}
					live[j] = live[len(live)-1]
					live = live[:len(live)-1]
				} else {
					n := uint64(rng.IntN(1 << (9 + rng.IntN(18))))
					bs, err := p.AllocPieces(ctx, n, 1+rng.IntN(8))
					if err != nil {
						t.Fatal(err)
					}
					checkPieces(t, bs, n, 8)
					if whole {
						checkWholeMaps(t, bs)
					}
					live = append(live, bs)
				}
				if i%100 == 0 {
					check(t, p)
					var all []*Block[Segment]
					for _, bs := range live {
						all = append(all, bs...)
					}
					assertNoOverlap(t, all)
				}
			}
			for _, bs := range live {
				for _, b := range bs {
					p.Free(b)
				}
			}
			check(t, p)
			if st := p.Stats(); st.FreeBlocks != st.Segments || st.Allocated != 0 || st.Requested != 0 || st.ActiveBlocks != 0 {
				t.Fatalf("after freeing all: %+v", st)
			}
			if _, err := p.Trim(); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Reserved != 0 {
				t.Fatalf("reserved %d after trimming an empty pool", st.Reserved)
			}
		})
	}
}

// With whole maps a medium request of more than a granule gets a segment of
// its own size, whole again once freed and then a piece of a later request;
// up to a granule, requests share medium segments as without.
func TestWholeMapsMediumSegments(t *testing.T) {
	ctx := context.Background()
	for _, whole := range []bool{false, true} {
		src := &fakeSource{}
		opts := []Option{WithGranularity(gran)}
		if whole {
			opts = append(opts, WithWholeMaps())
		}
		p := New(src, opts...)
		a, err := p.AllocPieces(ctx, 3<<20, 8)
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(LargeSegment)
		if whole {
			want = 4 << 20
		}
		if got := a[0].seg.size; got != want {
			t.Fatalf("whole maps %v: a 3 MiB request's segment is %d bytes, want %d", whole, got, want)
		}
		if !whole {
			continue
		}
		k, err := p.AllocPieces(ctx, gran, 8)
		if err != nil {
			t.Fatal(err)
		}
		if got := k[0].seg.size; len(k) != 1 || got != LargeSegment {
			t.Fatalf("a request of one granule: %d pieces in a segment of %d bytes, want one in a shared %d", len(k), got, LargeSegment)
		}
		b, err := p.AllocPieces(ctx, 3<<20, 8)
		if err != nil {
			t.Fatal(err)
		}
		// k's shared segment has room for b, which then comes from it.
		if b[0].seg != k[0].seg || src.made != 2 {
			t.Fatalf("a second 3 MiB request that fits: %d segments made, want 2", src.made)
		}
		p.Free(a[0])
		if !a[0].seg.releasable() {
			t.Fatal("a freed block of its own segment left the segment in use")
		}
		// 16 MiB fits no free block: the shared segment's tail from its
		// next granule on (14 MiB) and the start of a's freed segment.
		c, err := p.AllocPieces(ctx, 16<<20, 8)
		if err != nil {
			t.Fatal(err)
		}
		checkPieces(t, c, 16<<20, 8)
		checkWholeMaps(t, c)
		if len(c) != 2 || c[1].seg != a[0].seg || src.made != 2 {
			t.Fatalf("16 MiB over a shared tail and a freed own segment: %d pieces, %d segments made", len(c), src.made)
		}
		for _, bs := range [][]*Block[Segment]{k, b, c} {
			for _, x := range bs {
				p.Free(x)
			}
		}
		check(t, p)
	}
}

// A pool with whole maps keeps more free memory cached when it grows
// (WholeMapsCacheSlack); WithCacheSlack still sets it, in either order.
func TestWholeMapsCacheSlack(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		opts     []Option
		released int
	}{
		{"default", nil, 1},
		{"whole maps", []Option{WithWholeMaps()}, 0},
		{"whole maps, slack set after", []Option{WithWholeMaps(), WithCacheSlack(DefaultCacheSlack)}, 1},
		{"whole maps, slack set before", []Option{WithCacheSlack(DefaultCacheSlack), WithWholeMaps()}, 1},
	} {
		src := &fakeSource{}
		p := New(src, append([]Option{WithGranularity(gran)}, tc.opts...)...)
		a, err := p.Alloc(ctx, 16<<20)
		if err != nil {
			t.Fatal(err)
		}
		p.Free(a)
		// 20 MiB fits no cached block: growing to 36 MiB reserved for 20
		// allocated is within a slack of 1 and beyond one of 0.05.
		b, err := p.Alloc(ctx, 20<<20)
		if err != nil {
			t.Fatal(err)
		}
		if src.released != tc.released {
			t.Errorf("%s: %d segments released on growth, want %d", tc.name, src.released, tc.released)
		}
		p.Free(b)
		check(t, p)
	}
}

func TestMinGrowth(t *testing.T) {
	ctx := context.Background()
	src := &fakeSource{}
	p := New(src, WithGranularity(gran), WithWholeMaps(), WithMinGrowth(100<<20))
	// Nothing free: a 30 MiB request grows the pool by a 100 MiB segment
	// (rounded to whole granules) and takes its head.
	a, err := p.AllocPieces(ctx, 30<<20+1, 8)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, a, 30<<20+1, 8)
	if got := a[0].seg.size; len(a) != 1 || got != 100<<20 || a[0].offset != 0 || a[0].size != 32<<20 {
		t.Fatalf("30 MiB with nothing free: %d pieces, block of %d bytes at %d in a segment of %d; want one of 32 MiB at 0 in 100 MiB",
			len(a), a[0].size, a[0].offset, got)
	}
	// The free tail serves the next large requests: no new segment.
	b, err := p.AllocPieces(ctx, 60<<20, 8)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, b, 60<<20, 8)
	if src.made != 1 || b[0].seg != a[0].seg {
		t.Fatalf("60 MiB after it: %d segments made, want the first one's tail", src.made)
	}
	// With something free to piece together, only the rest is new, as
	// without the option: the first segment's last 8 MiB and 192 MiB.
	c, err := p.AllocPieces(ctx, 200<<20, 8)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, c, 200<<20, 8)
	if src.made != 2 || len(c) != 2 || c[0].seg != a[0].seg || c[1].seg.size != 192<<20 {
		t.Fatalf("200 MiB: %d segments made, %d pieces; want the 8 MiB tail and a new 192 MiB segment", src.made, len(c))
	}
	// Freed, everything goes back on trim.
	for _, bs := range [][]*Block[Segment]{a, b, c} {
		for _, x := range bs {
			p.Free(x)
		}
	}
	if _, err := p.Trim(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Reserved != 0 || st.Segments != 0 {
		t.Fatalf("after freeing all and a trim: %d bytes in %d segments reserved", st.Reserved, st.Segments)
	}
	// Off: the same first request gets a segment of its own size.
	q := New(&fakeSource{}, WithGranularity(gran), WithWholeMaps())
	d, err := q.AllocPieces(ctx, 30<<20+1, 8)
	if err != nil {
		t.Fatal(err)
	}
	if got := d[0].seg.size; got != 32<<20 {
		t.Fatalf("without WithMinGrowth: a segment of %d bytes, want 32 MiB", got)
	}
}
