package store

import (
	"context"
	"fmt"
	"sync"

	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/pool"
)

// Every free byte of a pool is zero: a new segment is zero-filled when it
// is made and a block when it is freed, so a create hands out a block
// without zeroing it on its own path. On a GPU the zero-fills are queued on
// the device's stream; an alloc waits for the device's latest one (by then
// it has almost always finished: a free comes long before the next create).

// zeroQueue keeps, per device, the wait for the latest zero-fill queued.
type zeroQueue struct {
	mu   sync.Mutex
	last map[int]*queuedZero
}

type queuedZero struct{ wait func() error }

// zero zero-fills n bytes at off of seg on device dev: queued when the
// backend can, else now.
func (s *Store) zero(dev int, seg backend.Segment, off, n uint64) error {
	if az, ok := seg.(backend.AsyncZeroer); ok {
		wait, err := az.ZeroAsync(context.Background(), off, n)
		if err == nil {
			s.zeros.mu.Lock()
			s.zeros.last[dev] = &queuedZero{wait: wait}
			s.zeros.mu.Unlock()
			return nil
		}
	}
	return seg.Zero(context.Background(), off, n)
}

// zeroed returns a wait for the zero-fills queued on dev so far; call it
// after the block was taken from the pool (a block freed before then is
// covered).
func (s *Store) zeroed(dev int) func() error {
	s.zeros.mu.Lock()
	z := s.zeros.last[dev]
	s.zeros.mu.Unlock()
	if z == nil {
		return func() error { return nil }
	}
	return func() error {
		if err := z.wait(); err != nil {
			return fmt.Errorf("zero-fill: %w", err)
		}
		s.zeros.mu.Lock()
		if s.zeros.last[dev] == z {
			delete(s.zeros.last, dev)
		}
		s.zeros.mu.Unlock()
		return nil
	}
}

// recycle returns blocks to their pool, zero-filled. A block that cannot be
// zero-filled is never reused.
func (s *Store) recycle(p *pool.Pool[backend.Segment], dev int, blocks ...*pool.Block[backend.Segment]) {
	for _, blk := range blocks {
		if s.zeroFill {
			if err := s.zero(dev, blk.Segment(), blk.Offset(), blk.Size()); err != nil {
				s.log.Error("could not zero-fill a freed block; it is not reused", "device", dev, "bytes", blk.Size(), "err", err)
				continue
			}
		}
		p.Free(blk)
	}
}
