// Package pool is mem-cuda's caching allocator, modelled on PyTorch's
// CUDACachingAllocator: segments come from a backend, blocks are carved out of
// them best-fit, split when the rest is worth keeping and coalesced with free
// neighbours on free. Three size classes keep small, short-lived blocks from
// fragmenting large segments: requests up to SmallSize come from 2 MiB
// segments (the small class), requests under MinLargeAlloc from
// LargeSegment-sized ones (the medium class), and larger ones get a segment
// of their own (the large class). A Pool is generic in its backend's
// segment type, so callers get their own segments back from blocks.
//
// A Pool is safe for concurrent use. It never touches the memory itself: the
// backend owns it, and the caller zero-fills or fences blocks as it needs.
package pool

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/google/btree"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// DefaultCacheSlack bounds the free memory a pool keeps cached: before it
// grows, it releases wholly free segments until its reserved bytes stay
// within (1+slack) times its allocated bytes after the growth. This keeps
// reserved/live near 1 at the price of more segment creations when the
// workload swings (PyTorch caches without bound). WithCacheSlack sets it.
const DefaultCacheSlack = 0.05

// WholeMapsCacheSlack is the default slack of a pool WithWholeMaps. There a
// wholly free segment can be a piece of any later request, so a cached one
// seldom adds to the peak, and a released one is a segment creation later.
const WholeMapsCacheSlack = 1.0

// Sizes that shape the pool (PyTorch's constants, except where noted).
const (
	Alignment       = 512      // every block size is a multiple of this
	SmallSize       = 1 << 20  // requests up to this size use the small pool
	SmallSegment    = 2 << 20  // segment size of the small pool
	MinLargeAlloc   = 10 << 20 // large requests under this share LargeSegment-sized segments
	LargeSegment    = 20 << 20 // segment size for large requests under MinLargeAlloc
	LargeRoundingTo = 2 << 20  // larger requests get their own segment, rounded to this
)

// Segment is a piece of memory obtained from a backend.
type Segment interface {
	// Size is the segment's size in bytes.
	Size() uint64
	// Release gives the memory back to the backend.
	Release() error
}

// Pinned is implemented by segments that must never be released while the
// pool lives (legacy CUDA IPC: any process may have mapped the handle).
type Pinned interface {
	Pinned() bool
}

// Source provides segments of type S: the backend's side of a pool.
type Source[S Segment] interface {
	NewSegment(ctx context.Context, size uint64) (S, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc[S Segment] func(ctx context.Context, size uint64) (S, error)

// NewSegment calls f.
func (f SourceFunc[S]) NewSegment(ctx context.Context, size uint64) (S, error) {
	return f(ctx, size)
}

// Block is an allocated range of a segment.
type Block[S Segment] struct {
	seg       *segment[S]
	offset    uint64
	size      uint64
	requested uint64
	allocated bool
	prev      *Block[S]
	next      *Block[S]
}

// Segment returns the backend segment the block lives in.
func (b *Block[S]) Segment() S { return b.seg.mem }

// Offset is the block's offset inside its segment.
func (b *Block[S]) Offset() uint64 { return b.offset }

// Size is the block's size (the request rounded up, possibly more when the
// remainder was too small to split off).
func (b *Block[S]) Size() uint64 { return b.size }

// Requested is the size that was asked for.
func (b *Block[S]) Requested() uint64 { return b.requested }

// sizeClass picks the pool of a request.
type sizeClass uint8

const (
	classSmall sizeClass = iota
	classMedium
	classLarge
	numClasses
)

func classOf(size uint64) sizeClass {
	switch {
	case size <= SmallSize:
		return classSmall
	case size < MinLargeAlloc:
		return classMedium
	}
	return classLarge
}

type segment[S Segment] struct {
	mem   S
	seq   uint64
	size  uint64
	class sizeClass
	head  *Block[S]
}

func lessBlock[S Segment](a, b *Block[S]) bool {
	if a.size != b.size {
		return a.size < b.size
	}
	if a.seg.seq != b.seg.seq {
		return a.seg.seq < b.seg.seq
	}
	return a.offset < b.offset
}

// Pool is a caching allocator over one Source.
type Pool[S Segment] struct {
	mu          sync.Mutex
	src         Source[S]
	budget      *Budget
	granule     uint64
	sets        [numClasses]*btree.BTreeG[*Block[S]]
	segments    map[*segment[S]]struct{}
	seq         uint64
	stats       Stats
	probe       Block[S]
	probeSeg    segment[S]
	oversizeDiv uint64
	slack       float64
	wholeMaps   bool
	minGrowth   uint64
	events      func(mem S, added bool)
}

// Option configures a pool. Options apply to pools of every segment type.
type Option func(*options)

type options struct {
	budget  *Budget
	granule uint64
	events  any // func(mem S, added bool) of the pool's S
	slack   *float64
	whole   bool
	growth  uint64
}

// WithCacheSlack sets how much free memory the pool keeps cached over its
// allocated bytes when it grows (DefaultCacheSlack, or WholeMapsCacheSlack
// WithWholeMaps; 0.25: a quarter more).
func WithCacheSlack(f float64) Option { return func(o *options) { o.slack = &f } }

// WithBudget makes the pool reserve its segments from b, which may be shared by
// the pools of one device (one per tenant).
func WithBudget(b *Budget) Option { return func(o *options) { o.budget = b } }

// WithGranularity rounds every segment up to a multiple of g (the backend's
// allocation granularity, 2 MiB for CUDA VMM).
func WithGranularity(g uint64) Option { return func(o *options) { o.granule = g } }

// WithWholeMaps says that clients map whole segments only (CUDA VMM maps
// a physical allocation whole): AllocPieces then chains pieces that abut
// when their segments are mapped side by side, the tail of one segment,
// whole free segments, the head of another (see AllocPieces). Free space
// in the middle of a segment can be no piece, so a medium request of more
// than a granule that nothing fits gets a segment of its own size, which
// is whole again once freed, and the pool caches more
// (WholeMapsCacheSlack). Both pay only when requests come through
// AllocPieces with more than one piece.
func WithWholeMaps() Option { return func(o *options) { o.whole = true } }

// WithMinGrowth makes a large request that AllocPieces can serve neither
// from one free block nor from free pieces grow the pool by a segment of
// at least n bytes: the request takes its head and the rest stays free (a
// tail that later requests take whole or as their first piece). Fewer,
// larger segments: fewer driver calls per byte, at the price of the free
// tail while nothing uses it. Off (0) by default.
func WithMinGrowth(n uint64) Option { return func(o *options) { o.growth = n } }

// WithSegmentEvents calls fn(mem, true) for each segment the pool adds
// (grown or adopted) and fn(mem, false) as it releases one, under the
// pool's lock: fn must not block, and mem is valid during the call. fn is
// a func(mem S, added bool) of the pool's segment type.
func WithSegmentEvents[S Segment](fn func(mem S, added bool)) Option {
	return func(o *options) { o.events = fn }
}

// New returns an empty pool drawing segments from src.
func New[S Segment](src Source[S], opts ...Option) *Pool[S] {
	o := options{granule: 1}
	for _, f := range opts {
		f(&o)
	}
	slack := DefaultCacheSlack
	switch {
	case o.slack != nil:
		slack = *o.slack
	case o.whole:
		slack = WholeMapsCacheSlack
	}
	if o.budget == nil {
		o.budget = NewBudget(0)
	}
	p := &Pool[S]{
		src:         src,
		budget:      o.budget,
		granule:     o.granule,
		oversizeDiv: 8,
		slack:       max(slack, 0),
		wholeMaps:   o.whole,
		minGrowth:   roundUp(o.growth, max(o.granule, 1)),
		segments:    make(map[*segment[S]]struct{}),
		events:      func(S, bool) {},
	}
	if fn, ok := o.events.(func(S, bool)); ok && fn != nil {
		p.events = fn
	}
	for i := range p.sets {
		p.sets[i] = btree.NewG(16, lessBlock[S])
	}
	p.probe.seg = &p.probeSeg
	return p
}

func roundUp(n, m uint64) uint64 { return (n + m - 1) / m * m }

// RoundSize is the block size the pool uses for a request of n bytes.
func RoundSize(n uint64) uint64 {
	if n == 0 {
		return Alignment
	}
	return roundUp(n, Alignment)
}

func (p *Pool[S]) segmentSize(size uint64) uint64 {
	var s uint64
	switch {
	case size <= SmallSize:
		s = SmallSegment
	case size < MinLargeAlloc && p.wholeMaps && size > p.granule:
		// Its own segment: freed, it is a whole segment, which any later
		// request can take as a piece; a hole amid a shared one is no
		// piece. Up to a granule, requests still share segments (an own
		// one would waste most of a granule each).
		s = size
	case size < MinLargeAlloc:
		s = LargeSegment
	default:
		s = roundUp(size, LargeRoundingTo)
	}
	return roundUp(s, p.granule)
}

// Alloc returns a block of at least n bytes. It reuses the best-fitting free
// block and asks the source for a new segment only when none fits.
func (p *Pool[S]) Alloc(ctx context.Context, n uint64) (*Block[S], error) {
	if n > 1<<62 {
		return nil, errdefs.Invalid("allocation of %d bytes is too large", n)
	}
	size := RoundSize(n)
	class := classOf(size)
	set := p.sets[class]
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.bestFit(set, size)
	if b != nil && class == classLarge && b.size-size > p.maxWaste(size) {
		// A much bigger free segment would waste its rest: take a segment
		// of the right size (the slack policy releases the free one).
		b = nil
	}
	return p.take(ctx, b, size, n, class)
}

// take hands out the free block b, or a new segment of class's size when
// b is nil, for a request of n bytes (size, rounded): a large block keeps
// its whole segment, any other gives the rest back as a free block.
// Called with p.mu held.
func (p *Pool[S]) take(ctx context.Context, b *Block[S], size, n uint64, class sizeClass) (*Block[S], error) {
	if b == nil {
		seg, err := p.grow(ctx, p.segmentSize(size), roundUp(size, p.granule), class)
		if err != nil {
			return nil, err
		}
		b = seg.head
	}
	cut := size
	if class == classLarge {
		cut = b.size
	}
	b = p.carve(b, b.offset, cut)
	p.account(b, n, 1)
	return b, nil
}

// maxWaste is how much larger than a large request a reused free block may be.
func (p *Pool[S]) maxWaste(size uint64) uint64 { return max(size/p.oversizeDiv, LargeRoundingTo) }

// bestFit finds the smallest free block of at least size bytes. Called with
// p.mu held; the probe is reused so that a lookup allocates nothing.
func (p *Pool[S]) bestFit(set *btree.BTreeG[*Block[S]], size uint64) *Block[S] {
	var found *Block[S]
	p.probe.size = size
	set.AscendGreaterOrEqual(&p.probe, func(b *Block[S]) bool {
		found = b
		return false
	})
	return found
}

// grow gets a new segment of size bytes. When the budget has no room, it
// trims cached free segments, and then settles for a segment of just minSize
// bytes (the request itself) before it gives up. Called with p.mu held.
func (p *Pool[S]) grow(ctx context.Context, size, minSize uint64, class sizeClass) (*segment[S], error) {
	// Room for the new segment within the slack over live bytes.
	if limit := uint64(float64(p.stats.Allocated+size) * (1 + p.slack)); limit > size {
		p.trimTo(limit - size)
	} else {
		p.trimTo(0)
	}
	if !p.budget.reserve(size) {
		p.trimLocked()
		if !p.budget.reserve(size) {
			if minSize >= size || !p.budget.reserve(minSize) {
				return nil, fmt.Errorf("%w: a segment of %d bytes would exceed the limit of %d bytes (%d in use)",
					errdefs.ErrOutOfMemory, minSize, p.budget.Limit(), p.budget.Used())
			}
			size = minSize
		}
	}
	mem, err := p.src.NewSegment(ctx, size)
	if err != nil {
		p.budget.release(size)
		return nil, fmt.Errorf("new segment of %d bytes: %w", size, err)
	}
	p.seq++
	seg := &segment[S]{mem: mem, seq: p.seq, size: size, class: class}
	seg.head = &Block[S]{seg: seg, size: size}
	p.segments[seg] = struct{}{}
	p.events(mem, true)
	p.stats.Reserved += size
	p.stats.Segments++
	p.stats.SegmentAllocs++
	if p.stats.Reserved > p.stats.PeakReserved {
		p.stats.PeakReserved = p.stats.Reserved
	}
	return seg, nil
}

// Free returns a block to the pool, merging it with free neighbours. The
// caller guarantees nothing uses the block any more.
func (p *Pool[S]) Free(b *Block[S]) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !b.allocated {
		panic("pool: double free")
	}
	b.allocated = false
	p.stats.Allocated -= b.size
	p.stats.Requested -= b.requested
	p.stats.ActiveBlocks--
	p.stats.Frees++
	b.requested = 0
	p.merge(b)
}

// merge puts a free block back in its set, joined with free neighbours.
// Called with p.mu held.
func (p *Pool[S]) merge(b *Block[S]) {
	set := p.setOf(b.seg)
	if prev := b.prev; prev != nil && !prev.allocated {
		set.Delete(prev)
		prev.size += b.size
		prev.next = b.next
		if b.next != nil {
			b.next.prev = prev
		}
		b = prev
	}
	if next := b.next; next != nil && !next.allocated {
		set.Delete(next)
		b.size += next.size
		b.next = next.next
		if next.next != nil {
			next.next.prev = b
		}
	}
	set.ReplaceOrInsert(b)
}

func (p *Pool[S]) setOf(s *segment[S]) *btree.BTreeG[*Block[S]] { return p.sets[s.class] }

// Trim releases every segment that holds no allocated block and returns the
// number of bytes given back.
func (p *Pool[S]) Trim() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.trimLocked()
}

// trimTo releases wholly free segments, largest first, while more than
// limit bytes are reserved. Called with p.mu held.
func (p *Pool[S]) trimTo(limit uint64) {
	for p.stats.Reserved > limit {
		var victim *segment[S]
		for seg := range p.segments {
			if !seg.releasable() {
				continue
			}
			if victim == nil || seg.size > victim.size {
				victim = seg
			}
		}
		if victim == nil {
			return
		}
		p.releaseSegment(victim)
	}
}

// releasable reports whether a segment holds no allocated block and may be
// given back (pinned segments never are).
func (seg *segment[S]) releasable() bool {
	if seg.head.allocated || seg.head.next != nil {
		return false
	}
	pin, ok := any(seg.mem).(Pinned)
	return !ok || !pin.Pinned()
}

func (p *Pool[S]) releaseSegment(seg *segment[S]) error {
	p.setOf(seg).Delete(seg.head)
	delete(p.segments, seg)
	p.events(seg.mem, false)
	err := seg.mem.Release()
	p.budget.release(seg.size)
	p.stats.Reserved -= seg.size
	p.stats.Segments--
	p.stats.SegmentReleases++
	return err
}

func (p *Pool[S]) trimLocked() (uint64, error) {
	var released uint64
	var firstErr error
	for seg := range p.segments {
		if !seg.releasable() {
			continue
		}
		if err := p.releaseSegment(seg); err != nil && firstErr == nil {
			firstErr = err
		}
		released += seg.size
	}
	return released, firstErr
}

// Segments are the pool's segments now, each passed to fn under the pool's
// lock (so that no event of WithSegmentEvents comes between).
func (p *Pool[S]) Segments(fn func(mem S)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for seg := range p.segments {
		fn(seg.mem)
	}
}

// Close releases every segment, allocated or not. The pool must not be used
// afterwards.
func (p *Pool[S]) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var firstErr error
	for seg := range p.segments {
		p.events(seg.mem, false)
		if err := seg.mem.Release(); err != nil && firstErr == nil {
			firstErr = err
		}
		p.budget.release(seg.size)
		delete(p.segments, seg)
	}
	for _, set := range p.sets {
		set.Clear(false)
	}
	p.stats.Reserved, p.stats.Segments, p.stats.Allocated, p.stats.ActiveBlocks = 0, 0, 0, 0
	return firstErr
}

// Range is an allocation inside a segment that a pool takes over: at
// Offset, Requested bytes asked for (its block is the pool's rounding of it).
type Range struct {
	Offset    uint64
	Requested uint64
}

// Adopt takes over a segment that another pool (of an earlier agent
// instance) carved: its blocks at the given ranges are allocated, the rest
// is free. The segment's class is its blocks' (every block of a segment is
// of one class), and its bytes count against the budget even past its limit:
// the memory exists either way. It returns the blocks in the order of ranges
// and the free spans (the caller zero-fills them if it must: a crash may
// have left a freed block unzeroed).
func (p *Pool[S]) Adopt(mem S, ranges []Range) ([]*Block[S], []Span, error) {
	size := mem.Size()
	if len(ranges) == 0 {
		return nil, nil, errdefs.Invalid("adopt a segment of %d bytes without allocations", size)
	}
	order := make([]int, len(ranges))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(ranges[a].Offset, ranges[b].Offset) })
	// A segment's class is its blocks' largest. Pieces of tensors
	// (AllocPieces) may share medium and large segments; small ones hold
	// small blocks alone.
	class := classSmall
	for _, r := range ranges {
		class = max(class, classOf(RoundSize(r.Requested)))
	}
	for _, i := range order {
		if c := classOf(RoundSize(ranges[i].Requested)); (c == classSmall) != (class == classSmall) {
			return nil, nil, errdefs.Invalid("segment holds blocks of different size classes (%d and %d bytes)", ranges[order[0]].Requested, ranges[i].Requested)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	seg := &segment[S]{mem: mem, seq: p.seq, size: size, class: class}
	out := make([]*Block[S], len(ranges))
	var last *Block[S]
	at := uint64(0)
	link := func(b *Block[S]) {
		b.prev = last
		if last == nil {
			seg.head = b
		} else {
			last.next = b
		}
		last = b
	}
	for k, i := range order {
		r := ranges[i]
		bsize := RoundSize(r.Requested)
		if classOf(bsize) == classLarge {
			// A large block reaches to the next granule (AllocPieces), or
			// is its whole segment (Alloc): up to the next block at most.
			end := size
			if k+1 < len(order) {
				end = min(end, ranges[order[k+1]].Offset)
			}
			if k+1 == len(order) {
				bsize = max(bsize, end-r.Offset)
			} else {
				bsize = max(bsize, min(roundUp(r.Offset+bsize, p.granule), end)-r.Offset)
			}
		}
		if r.Offset < at || r.Offset%Alignment != 0 || r.Offset+bsize > size || r.Offset+bsize < r.Offset {
			return nil, nil, errdefs.Invalid("block [%d,+%d) overlaps another or lies outside the segment of %d bytes", r.Offset, bsize, size)
		}
		if r.Offset > at {
			link(&Block[S]{seg: seg, offset: at, size: r.Offset - at})
		}
		b := &Block[S]{seg: seg, offset: r.Offset, size: bsize, requested: r.Requested, allocated: true}
		link(b)
		out[i] = b
		at = r.Offset + bsize
	}
	if at < size {
		link(&Block[S]{seg: seg, offset: at, size: size - at})
	}
	if !p.budget.reserve(size) {
		p.budget.used.Add(size)
	}
	p.segments[seg] = struct{}{}
	p.events(mem, true)
	set := p.setOf(seg)
	var free []Span
	for b := seg.head; b != nil; b = b.next {
		if !b.allocated {
			set.ReplaceOrInsert(b)
			free = append(free, Span{Offset: b.offset, Size: b.size})
			continue
		}
		p.stats.Allocated += b.size
		p.stats.Requested += b.requested
		p.stats.ActiveBlocks++
		p.stats.Allocs++
	}
	p.stats.Reserved += size
	p.stats.Segments++
	p.stats.PeakAllocated = max(p.stats.PeakAllocated, p.stats.Allocated)
	p.stats.PeakReserved = max(p.stats.PeakReserved, p.stats.Reserved)
	return out, free, nil
}

// Span is a byte range of a segment.
type Span struct {
	Offset uint64
	Size   uint64
}
