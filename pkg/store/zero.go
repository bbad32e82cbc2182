package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/pool"
)

// Every free byte of a pool is zero: a new segment is zero-filled when it
// is made and a block when it is freed, so a create hands out a block
// without zeroing it on its own path. On a GPU the zero-fills are queued on
// the device's stream; an alloc waits for the device's latest one (by then
// it has almost always finished: a free comes long before the next create).
// A watcher per device waits for the fills that frees queue, off any
// request's path, so that a create after a free finds them done and makes
// no driver call for them.

// zeroQueue keeps, per device, the wait for the latest zero-fill queued
// and how far the fills are known to be done.
type zeroQueue struct {
	mu      sync.Mutex
	devices map[int]*deviceZeros
	watch   sync.WaitGroup // the watchers, waited for at Close
}

// deviceZeros is one device's queued zero-fills. A fill's wait covers every
// fill queued before it on the device, so one number says what is done:
// the highest sequence number whose wait returned.
type deviceZeros struct {
	last     *queuedZero // under zeroQueue.mu: the latest fill queued
	seq      uint64      // under zeroQueue.mu: the last fill's number
	finished atomic.Uint64
	kick     chan struct{} // wakes the watcher; nil until it starts
}

type queuedZero struct {
	wait func() error
	seq  uint64
}

// done says whether z is known to be finished.
func (d *deviceZeros) done(z *queuedZero) bool { return d.finished.Load() >= z.seq }

// finish records that the fills up to z are done.
func (d *deviceZeros) finish(z *queuedZero) {
	for {
		f := d.finished.Load()
		if f >= z.seq || d.finished.CompareAndSwap(f, z.seq) {
			return
		}
	}
}

func (q *zeroQueue) device(dev int) *deviceZeros {
	d := q.devices[dev]
	if d == nil {
		d = &deviceZeros{}
		q.devices[dev] = d
	}
	return d
}

// zero zero-fills n bytes at off of seg on device dev: queued when the
// backend can, else now.
func (s *Store) zero(dev int, seg backend.Segment, off, n uint64) error {
	if az, ok := seg.(backend.AsyncZeroer); ok {
		wait, err := az.ZeroAsync(context.Background(), off, n)
		if err == nil {
			s.zeros.mu.Lock()
			d := s.zeros.device(dev)
			d.seq++
			d.last = &queuedZero{wait: wait, seq: d.seq}
			s.zeros.mu.Unlock()
			return nil
		}
	}
	return seg.Zero(context.Background(), off, n)
}

// watchZeros hands dev's latest queued fill, if any, to its watcher,
// started on the first one: frees call it, so the next create need not wait.
func (s *Store) watchZeros(dev int) {
	s.zeros.mu.Lock()
	d := s.zeros.device(dev)
	if d.last == nil || d.done(d.last) {
		s.zeros.mu.Unlock()
		return // nothing queued (a backend that fills at once), or seen done
	}
	if d.kick == nil && s.bg.Err() == nil {
		d.kick = make(chan struct{}, 1)
		s.zeros.watch.Add(1)
		go s.watchDevice(d)
	}
	kick := d.kick
	s.zeros.mu.Unlock()
	if kick != nil {
		select {
		case kick <- struct{}{}:
		default: // already woken: it takes the latest fill
		}
	}
}

// stopWatchers waits for the watchers to end; call it once the store's
// background context is cancelled. One may be in a driver call on the
// device's zero event, which the backend destroys when it closes. Taking
// the lock once orders this after any zero that started a watcher before
// the cancel: later ones see the cancel and start none.
func (q *zeroQueue) stopWatchers() {
	q.mu.Lock()
	q.mu.Unlock() //nolint:staticcheck // an empty critical section on purpose: see above
	q.watch.Wait()
}

// watchDevice waits for a device's latest queued fill each time a free
// queues one, until the store closes. A fill that fails is left to the
// create that needs it, which reports the error.
func (s *Store) watchDevice(d *deviceZeros) {
	defer s.zeros.watch.Done()
	for {
		select {
		case <-s.bg.Done():
			return
		case <-d.kick:
		}
		s.zeros.mu.Lock()
		z := d.last
		s.zeros.mu.Unlock()
		if z != nil && !d.done(z) && z.wait() == nil {
			d.finish(z)
		}
	}
}

// zeroed returns a wait for the zero-fills queued on dev so far; call it
// after the block was taken from the pool (a block freed before then is
// covered).
func (s *Store) zeroed(dev int) func() error {
	s.zeros.mu.Lock()
	d := s.zeros.devices[dev]
	var z *queuedZero
	if d != nil {
		z = d.last
	}
	s.zeros.mu.Unlock()
	if z == nil || d.done(z) {
		return func() error { return nil }
	}
	return func() error {
		if d.done(z) {
			return nil
		}
		if err := z.wait(); err != nil {
			return fmt.Errorf("zero-fill: %w", err)
		}
		d.finish(z)
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
	if s.zeroFill {
		s.watchZeros(dev)
	}
}
