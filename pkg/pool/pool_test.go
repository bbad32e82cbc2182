package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

type fakeSegment struct {
	size     uint64
	released *int
}

func (s *fakeSegment) Size() uint64 { return s.size }
func (s *fakeSegment) Release() error {
	*s.released++
	return nil
}

type fakeSource struct {
	made, released int
	fail           bool
}

func (f *fakeSource) NewSegment(_ context.Context, size uint64) (Segment, error) {
	if f.fail {
		return nil, errors.New("backend refused")
	}
	f.made++
	return &fakeSegment{size: size, released: &f.released}, nil
}

// check verifies the pool's invariants: blocks tile their segments without
// overlap, no two free neighbours are left unmerged, the free sets hold
// exactly the free blocks, and the statistics add up.
func check(t *testing.T, p *Pool[Segment]) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var reserved, allocated uint64
	free := map[*Block[Segment]]bool{}
	for seg := range p.segments {
		reserved += seg.size
		var off uint64
		var prev *Block[Segment]
		for b := seg.head; b != nil; b = b.next {
			if b.offset != off {
				t.Fatalf("segment %d: block at %d, expected %d (gap or overlap)", seg.seq, b.offset, off)
			}
			if b.prev != prev || b.seg != seg {
				t.Fatalf("segment %d: broken links at offset %d", seg.seq, b.offset)
			}
			if b.size == 0 || b.size%Alignment != 0 {
				t.Fatalf("block size %d not a positive multiple of %d", b.size, Alignment)
			}
			if b.allocated {
				allocated += b.size
				if b.requested > b.size {
					t.Fatalf("block of %d holds a request of %d", b.size, b.requested)
				}
			} else {
				if prev != nil && !prev.allocated {
					t.Fatalf("segment %d: adjacent free blocks at %d not coalesced", seg.seq, b.offset)
				}
				free[b] = true
			}
			off += b.size
			prev = b
		}
		if off != seg.size {
			t.Fatalf("segment %d: blocks cover %d of %d bytes", seg.seq, off, seg.size)
		}
	}
	n := 0
	for class, set := range p.sets {
		set.Ascend(func(b *Block[Segment]) bool {
			n++
			if !free[b] {
				t.Errorf("free set holds a block that is not free in its segment (offset %d)", b.offset)
			}
			if b.seg.class != sizeClass(class) {
				t.Errorf("block of a class %d segment in the class %d set", b.seg.class, class)
			}
			return true
		})
	}
	if n != len(free) {
		t.Fatalf("free sets hold %d blocks, segments have %d free blocks", n, len(free))
	}
	if reserved != p.stats.Reserved || allocated != p.stats.Allocated {
		t.Fatalf("stats say reserved=%d allocated=%d, segments say %d and %d", p.stats.Reserved, p.stats.Allocated, reserved, allocated)
	}
	if p.budget.Used() != reserved {
		t.Fatalf("budget used %d, reserved %d", p.budget.Used(), reserved)
	}
}

func TestAllocRoundsAndSplits(t *testing.T) {
	src := &fakeSource{}
	p := New(src)
	ctx := context.Background()
	tests := []struct {
		req, size uint64
	}{
		{0, 512}, {1, 512}, {512, 512}, {513, 1024}, {1 << 20, 1 << 20}, {(1 << 20) + 1, (1 << 20) + 512},
	}
	for _, tc := range tests {
		b, err := p.Alloc(ctx, tc.req)
		if err != nil {
			t.Fatal(err)
		}
		if b.Size() != tc.size || b.Requested() != tc.req {
			t.Errorf("Alloc(%d): size %d requested %d, want size %d", tc.req, b.Size(), b.Requested(), tc.size)
		}
		check(t, p)
	}
	st := p.Stats()
	// The five small requests share one 2 MiB segment; the large one gets a 20 MiB one.
	if st.Segments != 2 || src.made != 2 {
		t.Errorf("segments=%d made=%d, want 2 (one small, one large)", st.Segments, src.made)
	}
}

func TestSegmentSizes(t *testing.T) {
	p := New(&fakeSource{}, WithGranularity(2<<20))
	for _, tc := range []struct{ req, seg uint64 }{
		{100, SmallSegment}, {SmallSize, SmallSegment}, {SmallSize + 1, LargeSegment},
		{MinLargeAlloc - Alignment, LargeSegment}, {MinLargeAlloc, MinLargeAlloc}, {MinLargeAlloc + 1, MinLargeAlloc + LargeRoundingTo},
	} {
		if got := p.segmentSize(RoundSize(tc.req)); got != tc.seg {
			t.Errorf("segmentSize(%d) = %d, want %d", tc.req, got, tc.seg)
		}
	}
}

func TestFreeCoalescesAndReuses(t *testing.T) {
	src := &fakeSource{}
	p := New(src)
	ctx := context.Background()
	var bs []*Block[Segment]
	for i := 0; i < 4; i++ {
		b, err := p.Alloc(ctx, 4096)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	p.Free(bs[1])
	p.Free(bs[2])
	check(t, p)
	// The two freed neighbours merged: an 8 KiB request fits where they were.
	b, err := p.Alloc(ctx, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if b.Offset() != bs[1].Offset() {
		t.Errorf("8 KiB block at %d, want reuse of the coalesced hole at %d", b.Offset(), bs[1].Offset())
	}
	if src.made != 1 {
		t.Errorf("made %d segments, want 1", src.made)
	}
	p.Free(b)
	p.Free(bs[0])
	p.Free(bs[3])
	check(t, p)
	if st := p.Stats(); st.FreeBlocks != 1 || st.LargestFree != SmallSegment || st.Allocated != 0 {
		t.Errorf("after freeing everything: %+v, want one free block of the whole segment", st)
	}
}

func TestBestFit(t *testing.T) {
	p := New(&fakeSource{})
	ctx := context.Background()
	// Leave holes of 8 KiB and 4 KiB separated by live blocks, then ask for 4 KiB.
	a, _ := p.Alloc(ctx, 8192)
	p.Alloc(ctx, 512) // live blocks keep the two holes apart
	b, _ := p.Alloc(ctx, 4096)
	p.Alloc(ctx, 512)
	p.Free(a)
	p.Free(b)
	got, _ := p.Alloc(ctx, 4096)
	if got.Offset() != b.Offset() {
		t.Errorf("4 KiB request got offset %d, want the 4 KiB hole at %d", got.Offset(), b.Offset())
	}
	check(t, p)
}

func TestBudgetTrimsThenFails(t *testing.T) {
	src := &fakeSource{}
	budget := NewBudget(LargeSegment + SmallSegment)
	p := New(src, WithBudget(budget))
	ctx := context.Background()
	s, err := p.Alloc(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	p.Free(s) // cached small segment
	l, err := p.Alloc(ctx, 5<<20)
	if err != nil {
		t.Fatal(err)
	}
	// A second large segment does not fit: the cached small segment is trimmed, still no room.
	_, err = p.Alloc(ctx, 16<<20)
	if !errors.Is(err, errdefs.ErrOutOfMemory) {
		t.Fatalf("err = %v, want out of memory", err)
	}
	if src.released != 1 {
		t.Errorf("released %d segments, want the cached small one trimmed", src.released)
	}
	p.Free(l)
	if _, err := p.Alloc(ctx, 16<<20); err != nil {
		t.Fatalf("after freeing, a 16 MiB block should fit: %v", err)
	}
	check(t, p)
}

func TestTightSegmentNearLimit(t *testing.T) {
	src := &fakeSource{}
	p := New(src, WithBudget(NewBudget(1<<20)))
	b, err := p.Alloc(context.Background(), 600<<10)
	if err != nil {
		t.Fatalf("a 600 KiB block under a 1 MiB limit: %v", err)
	}
	if st := p.Stats(); st.Reserved != 600<<10 || b.Size() != 600<<10 {
		t.Fatalf("reserved %d, want a segment of exactly the request", st.Reserved)
	}
	if _, err := p.Alloc(context.Background(), 600<<10); !errors.Is(err, errdefs.ErrOutOfMemory) {
		t.Fatalf("second 600 KiB: %v, want out of memory", err)
	}
	check(t, p)
}

func TestSourceErrorLeavesBudget(t *testing.T) {
	src := &fakeSource{fail: true}
	budget := NewBudget(0)
	p := New(src, WithBudget(budget))
	if _, err := p.Alloc(context.Background(), 10); err == nil {
		t.Fatal("want error from failing source")
	}
	if budget.Used() != 0 {
		t.Errorf("budget used %d after a failed segment", budget.Used())
	}
}

type pinnedSegment struct{ fakeSegment }

func (pinnedSegment) Pinned() bool { return true }

func TestTrimSkipsPinnedSegments(t *testing.T) {
	released := 0
	p := New(SourceFunc[Segment](func(_ context.Context, size uint64) (Segment, error) {
		return &pinnedSegment{fakeSegment{size: size, released: &released}}, nil
	}))
	b, _ := p.Alloc(context.Background(), 100)
	p.Free(b)
	if n, _ := p.Trim(); n != 0 || released != 0 {
		t.Fatalf("trim released %d bytes of a pinned segment", n)
	}
}

func TestTrim(t *testing.T) {
	src := &fakeSource{}
	p := New(src)
	ctx := context.Background()
	a, _ := p.Alloc(ctx, 100)
	b, _ := p.Alloc(ctx, 30<<20)
	c, _ := p.Alloc(ctx, 2<<20)
	p.Free(b)
	n, err := p.Trim()
	if err != nil {
		t.Fatal(err)
	}
	if n != 30<<20 {
		t.Errorf("trimmed %d bytes, want the free 30 MiB segment", n)
	}
	p.Free(a)
	p.Free(c)
	n, _ = p.Trim()
	if n != SmallSegment+LargeSegment {
		t.Errorf("trimmed %d, want %d", n, SmallSegment+LargeSegment)
	}
	check(t, p)
	if st := p.Stats(); st.Reserved != 0 || st.Segments != 0 || src.released != 3 {
		t.Errorf("after trim: %+v, released %d", st, src.released)
	}
}

// TestRandomOps is a property test: random allocation and free sequences keep
// every invariant, live blocks never overlap, and freeing everything coalesces
// each segment back into one block.
func TestRandomOps(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			p := New(&fakeSource{}, WithBudget(NewBudget(0)))
			ctx := context.Background()
			var live []*Block[Segment]
			for i := 0; i < 3000; i++ {
				if len(live) > 0 && rng.IntN(100) < 45 {
					j := rng.IntN(len(live))
					p.Free(live[j])
					live[j] = live[len(live)-1]
					live = live[:len(live)-1]
				} else {
					var n uint64
					switch rng.IntN(4) {
					case 0:
						n = uint64(rng.IntN(4096))
					case 1:
						n = uint64(rng.IntN(1 << 20))
					case 2:
						n = uint64(rng.IntN(12 << 20))
					default:
						n = uint64(rng.IntN(64 << 20))
					}
					b, err := p.Alloc(ctx, n)
					if err != nil {
						t.Fatal(err)
					}
					live = append(live, b)
				}
				if i%100 == 0 {
					check(t, p)
					assertNoOverlap(t, live)
				}
			}
			check(t, p)
			assertNoOverlap(t, live)
			for _, b := range live {
				p.Free(b)
			}
			check(t, p)
			st := p.Stats()
			if st.FreeBlocks != st.Segments || st.Allocated != 0 || st.Requested != 0 {
				t.Fatalf("after freeing all: %d free blocks in %d segments, allocated %d", st.FreeBlocks, st.Segments, st.Allocated)
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

func assertNoOverlap(t *testing.T, live []*Block[Segment]) {
	t.Helper()
	type span struct{ lo, hi uint64 }
	bySeg := map[*segment[Segment]][]span{}
	for _, b := range live {
		if !b.allocated {
			t.Fatalf("live block at %d is marked free", b.offset)
		}
		for _, s := range bySeg[b.seg] {
			if b.offset < s.hi && s.lo < b.offset+b.size {
				t.Fatalf("live blocks overlap: [%d,%d) and [%d,%d)", b.offset, b.offset+b.size, s.lo, s.hi)
			}
		}
		bySeg[b.seg] = append(bySeg[b.seg], span{b.offset, b.offset + b.size})
	}
}

func TestDoubleFreePanics(t *testing.T) {
	p := New(&fakeSource{})
	b, _ := p.Alloc(context.Background(), 10)
	p.Free(b)
	defer func() {
		if recover() == nil {
			t.Fatal("double free did not panic")
		}
	}()
	p.Free(b)
}

// A pool of a new agent instance adopts the segments an earlier pool carved
// (from the records of their tensors): the same blocks are allocated, the
// gaps are free and reusable, and freeing everything leaves whole free
// segments that trim gives back.
func TestAdoptRebuildsAnotherPoolsBlocks(t *testing.T) {
	ctx := context.Background()
	src := &fakeSource{}
	old := New[Segment](src)
	sizes := []uint64{1000, 300 << 10, 700 << 10, 3 << 20, 5 << 20, 64 << 20, 100}
	var blocks []*Block[Segment]
	for _, n := range sizes {
		b, err := old.Alloc(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, b)
	}
	old.Free(blocks[1]) // a gap in the small segment
	blocks = append(blocks[:1], blocks[2:]...)
	sizes = append(sizes[:1], sizes[2:]...)

	bySeg := map[Segment][]int{}
	var segs []Segment
	for i, b := range blocks {
		if _, ok := bySeg[b.Segment()]; !ok {
			segs = append(segs, b.Segment())
		}
		bySeg[b.Segment()] = append(bySeg[b.Segment()], i)
	}
	fresh := New[Segment](src, WithBudget(NewBudget(1<<20))) // a smaller limit than what it adopts: adopted anyway
	adopted := make([]*Block[Segment], len(blocks))
	for _, seg := range segs {
		var ranges []Range
		for _, i := range bySeg[seg] {
			ranges = append(ranges, Range{Offset: blocks[i].Offset(), Requested: sizes[i]})
		}
		got, _, err := fresh.Adopt(seg, ranges)
		if err != nil {
			t.Fatal(err)
		}
		for k, i := range bySeg[seg] {
			adopted[i] = got[k]
		}
	}
	check(t, fresh)
	if got, want := fresh.Stats().Requested, old.Stats().Requested; got != want {
		t.Fatalf("adopted pool has %d requested bytes, the original %d", got, want)
	}
	if got, want := fresh.Stats().Segments, old.Stats().Segments; got != want {
		t.Fatalf("adopted %d segments, the original has %d", got, want)
	}
	for i, b := range adopted {
		if b.Offset() != blocks[i].Offset() || b.Segment() != blocks[i].Segment() || b.Requested() != sizes[i] {
			t.Fatalf("block %d adopted at %d in %p, was at %d in %p", i, b.Offset(), b.Segment(), blocks[i].Offset(), blocks[i].Segment())
		}
	}
	// The gap is reused before any new segment is made.
	made := src.made
	gap, err := fresh.Alloc(ctx, 200<<10)
	if err != nil {
		t.Fatal(err)
	}
	if src.made != made || gap.Segment() != blocks[0].Segment() {
		t.Fatalf("a request that fits the adopted gap made a new segment")
	}
	fresh.Free(gap)
	for _, b := range adopted {
		fresh.Free(b)
		check(t, fresh)
	}
	if n, err := fresh.Trim(); err != nil || n != old.Stats().Reserved {
		t.Fatalf("trim after freeing everything gave back %d bytes (err %v), want %d", n, err, old.Stats().Reserved)
	}
}

func TestAdoptRefusesBadRanges(t *testing.T) {
	p := New[Segment](&fakeSource{})
	seg := &fakeSegment{size: SmallSegment, released: new(int)}
	for name, ranges := range map[string][]Range{
		"none":      nil,
		"overlap":   {{Offset: 0, Requested: 4096}, {Offset: 2048, Requested: 10}},
		"outside":   {{Offset: SmallSegment - 512, Requested: 4096}},
		"unaligned": {{Offset: 100, Requested: 10}},
		"classes":   {{Offset: 0, Requested: 10}, {Offset: 4096, Requested: 3 << 20}},
	} {
		if _, _, err := p.Adopt(seg, ranges); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: adopt returned %v, want invalid argument", name, err)
		}
	}
	check(t, p)
	if p.Stats().Segments != 0 || p.budget.Used() != 0 {
		t.Fatalf("refused adoptions left %d segments, %d bytes", p.Stats().Segments, p.budget.Used())
	}
}
