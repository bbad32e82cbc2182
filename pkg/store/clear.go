package store

import (
	"context"
	"fmt"

	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/pool"
)

// Every free byte of a pool is zero: a new segment is cleared when it is
// made and a block when it is freed, so a create hands out a block without
// clearing it on its own path. On a GPU the clears are queued on the
// device's stream; an alloc waits for the device's latest one (by then it
// has almost always finished: a free comes long before the next create).

// pendingClear is the wait for the latest clear queued on a device.
type pendingClear struct{ wait func() error }

// clear zeroes n bytes at off of seg on device dev: queued when the backend
// can, else now.
func (s *Store) clear(dev int, seg backend.Segment, off, n uint64) error {
	if az, ok := seg.(backend.AsyncZeroer); ok {
		wait, err := az.ZeroAsync(context.Background(), off, n)
		if err == nil {
			s.mu.Lock()
			s.clears[dev] = &pendingClear{wait: wait}
			s.mu.Unlock()
			return nil
		}
	}
	return seg.Zero(context.Background(), off, n)
}

// cleared returns a wait for the clears queued on dev so far; call it after
// the block was taken from the pool (a block freed before then is covered).
func (s *Store) cleared(dev int) func() error {
	s.mu.Lock()
	c := s.clears[dev]
	s.mu.Unlock()
	if c == nil {
		return func() error { return nil }
	}
	return func() error {
		if err := c.wait(); err != nil {
			return fmt.Errorf("zero-fill: %w", err)
		}
		s.mu.Lock()
		if s.clears[dev] == c {
			delete(s.clears, dev)
		}
		s.mu.Unlock()
		return nil
	}
}

// recycle returns a block to its pool, cleared. A block that cannot be
// cleared is never reused.
func (s *Store) recycle(p *pool.Pool, dev int, blk *pool.Block) {
	if s.zeroFill {
		if err := s.clear(dev, blk.Segment().(backend.Segment), blk.Offset(), blk.Size()); err != nil {
			s.log.Error("could not clear a freed block; it is not reused", "device", dev, "bytes", blk.Size(), "err", err)
			return
		}
	}
	p.Free(blk)
}
