package pool

import (
	"cmp"
	"context"
	"slices"

	"github.com/google/btree"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// AllocPieces returns memory for n bytes as at most max blocks, to be
// mapped one after another into one virtual range (clients of the host
// backend do, with mmap; a GPU maps whole allocations only, so the agent
// asks for one piece there). When one free block fits,
// it is the only piece, as with Alloc. Otherwise the request is assembled
// from the granule-aligned parts of free medium and large blocks, largest
// first, and only what they lack comes from a new segment: a freed hole
// serves any later size instead of waiting for a request that fits it.
//
// Every piece starts at a multiple of the granularity inside its segment,
// and every piece but the last is a multiple of it in size, so that the
// pieces abut once mapped. Small requests (up to SmallSize) and max <= 1
// take Alloc's path. Each piece is freed on its own with Free.
func (p *Pool[S]) AllocPieces(ctx context.Context, n uint64, max int) ([]*Block[S], error) {
	size := RoundSize(n)
	if max <= 1 || classOf(size) == classSmall || p.granule <= 1 {
		b, err := p.Alloc(ctx, n)
		if err != nil {
			return nil, err
		}
		return []*Block[S]{b}, nil
	}
	if n > 1<<62 {
		return nil, errdefs.Invalid("allocation of %d bytes is too large", n)
	}
	class := classOf(size)
	set := p.sets[class]
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.bestFit(set, size); b != nil {
		// One block fits: split off the rest at the next granule so that
		// it stays usable as a piece.
		cut := size
		if class == classLarge {
			cut = min(roundUp(b.offset+size, p.granule)-b.offset, b.size)
		}
		b = p.carve(b, b.offset, cut)
		p.account(b, n, 1)
		return []*Block[S]{b}, nil
	}
	var spans []freeSpan[S]
	if p.wholeMaps {
		spans = p.edgeChain(size, max)
	} else {
		spans = p.alignedFree(max)
	}
	if want := roundUp(size, p.granule); len(spans) == 0 && class == classLarge && p.minGrowth > want {
		// Nothing free to piece together: a segment of at least minGrowth
		// (WithMinGrowth), the rest of it a free tail.
		seg, err := p.grow(ctx, p.minGrowth, want, classLarge)
		if err != nil {
			return nil, err
		}
		b := p.carve(seg.head, 0, want)
		p.account(b, n, 1)
		return []*Block[S]{b}, nil
	}
	if len(spans) == 0 {
		// Nothing free to piece together: a segment of the request's own
		// class, as Alloc makes.
		b, err := p.take(ctx, nil, size, n, class)
		if err != nil {
			return nil, err
		}
		return []*Block[S]{b}, nil
	}
	var pieces []*Block[S]
	var have uint64
	for _, s := range spans {
		if have >= size {
			break
		}
		take := min(s.usable, size-have)
		if have+take < size {
			take = s.usable // every piece but the last is whole granules
		}
		b := p.carve(s.b, s.start, take)
		b.allocated = true // before a growth below may trim: its segment is in use
		pieces = append(pieces, b)
		have += take
	}
	if have < size {
		if len(pieces) == max {
			last := pieces[len(pieces)-1]
			have -= last.size
			pieces = pieces[:len(pieces)-1]
			last.allocated = false
			p.merge(last)
		}
		rest := size - have
		seg, err := p.grow(ctx, roundUp(rest, p.granule), roundUp(rest, p.granule), classLarge)
		if err != nil {
			for _, b := range pieces {
				b.allocated = false
				p.merge(b)
			}
			return nil, err
		}
		pieces = append(pieces, p.carve(seg.head, 0, rest))
	}
	var asked uint64
	for i, b := range pieces {
		req := b.size
		if i == len(pieces)-1 {
			req = n - asked
		}
		asked += req
		p.account(b, req, 0)
	}
	p.stats.Allocs++
	return pieces, nil
}

type freeSpan[S Segment] struct {
	b      *Block[S]
	start  uint64 // first granule boundary inside the block
	usable uint64 // whole granules from start to the block's end
}

// alignedFree lists the free medium and large blocks that hold at least
// one whole granule, most usable bytes first, at most max of them.
// Called with p.mu held.
func (p *Pool[S]) alignedFree(max int) []freeSpan[S] {
	out := make([]freeSpan[S], 0, max+1)
	for _, c := range []sizeClass{classLarge, classMedium} {
		p.sets[c].Descend(func(b *Block[S]) bool {
			// Sorted by size, and a block's usable bytes are at most its
			// size: once max spans are at least this block, none after it
			// can displace them.
			if b.size < p.granule || (len(out) == max && out[max-1].usable >= b.size) {
				return false
			}
			start := roundUp(b.offset, p.granule)
			end := (b.offset + b.size) / p.granule * p.granule
			if end <= start {
				return true
			}
			s := freeSpan[S]{b: b, start: start, usable: end - start}
			i, _ := slices.BinarySearchFunc(out, s.usable, func(e freeSpan[S], u uint64) int { return cmp.Compare(u, e.usable) })
			out = slices.Insert(out, i, s)
			if len(out) > max {
				out = out[:max]
			}
			return true
		})
	}
	return out
}

// edgeChain picks, for WithWholeMaps, free blocks that abut once their
// segments are mapped whole side by side: first the largest free block
// that reaches its segment's end (its part from a granule boundary on),
// then whole free segments, largest first, and last the smallest free
// block at a segment's start that holds what is still missing. Without
// such a last block the chain ends at a segment's end, and the rest comes
// from a new segment, whose start is the last piece. At most max blocks.
// Called with p.mu held.
func (p *Pool[S]) edgeChain(size uint64, max int) []freeSpan[S] {
	var tail freeSpan[S]
	var wholes, heads []freeSpan[S]
	for _, c := range []sizeClass{classLarge, classMedium} {
		p.sets[c].Ascend(func(b *Block[S]) bool {
			end := b.offset + b.size
			switch {
			case b.offset == 0 && end == b.seg.size:
				wholes = append(wholes, freeSpan[S]{b: b, usable: b.size})
			case end == b.seg.size:
				if start := roundUp(b.offset, p.granule); start < end && end-start > tail.usable {
					tail = freeSpan[S]{b: b, start: start, usable: end - start}
				}
			case b.offset == 0:
				heads = append(heads, freeSpan[S]{b: b, usable: b.size})
			}
			return true
		})
	}
	slices.SortStableFunc(wholes, func(a, b freeSpan[S]) int { return cmp.Compare(b.usable, a.usable) })
	var out []freeSpan[S]
	var have uint64
	if tail.b != nil {
		out, have = append(out, tail), tail.usable
	}
	used := 0
	for _, w := range wholes {
		if len(out) >= max-1 || have+w.usable >= size {
			break
		}
		out, have = append(out, w), have+w.usable
		used++
	}
	// The last piece: the smallest block at a segment's start that holds
	// the rest (a whole segment not taken above may be one).
	var last *freeSpan[S]
	for _, c := range [][]freeSpan[S]{heads, wholes[used:]} {
		for i := range c {
			if c[i].usable >= size-have && (last == nil || c[i].usable < last.usable) {
				last = &c[i]
			}
		}
	}
	if last != nil && len(out) < max {
		out = append(out, *last)
	}
	return out
}

// carve takes [off, off+n) out of the free block b as an allocated block,
// leaving what lies before and after it free. Called with p.mu held.
func (p *Pool[S]) carve(b *Block[S], off, n uint64) *Block[S] {
	set := p.setOf(b.seg)
	set.Delete(b)
	if off > b.offset {
		head := &Block[S]{seg: b.seg, offset: b.offset, size: off - b.offset, prev: b.prev, next: b}
		if b.prev != nil {
			b.prev.next = head
		} else {
			b.seg.head = head
		}
		b.prev = head
		b.size -= head.size
		b.offset = off
		set.ReplaceOrInsert(head)
	}
	if b.size > n {
		p.splitOff(set, b, n)
	}
	return b
}

// splitOff leaves b n bytes and makes the rest a free block after it, in
// set. Called with p.mu held.
func (p *Pool[S]) splitOff(set *btree.BTreeG[*Block[S]], b *Block[S], n uint64) {
	r := &Block[S]{seg: b.seg, offset: b.offset + n, size: b.size - n, prev: b, next: b.next}
	if b.next != nil {
		b.next.prev = r
	}
	b.next = r
	b.size = n
	set.ReplaceOrInsert(r)
}

// account marks b allocated for req bytes asked; allocs counts the request
// once. Called with p.mu held.
func (p *Pool[S]) account(b *Block[S], req uint64, allocs uint64) {
	b.allocated = true
	b.requested = req
	p.stats.Allocated += b.size
	p.stats.Requested += req
	p.stats.ActiveBlocks++
	p.stats.Allocs += allocs
	p.stats.PeakAllocated = max(p.stats.PeakAllocated, p.stats.Allocated)
}
