package store

import (
	"context"
	"time"
)

// Fence is GPU work that may still touch a block: the block is reused only
// once every fence attached to it is done (event-deferred reuse, the
// design's recordStream). Release is called once the store no longer needs it.
type Fence interface {
	Done() bool
	Release()
}

// AttachFence adds a fence to a live tensor's memory; false when the tensor
// has no memory here (the caller keeps the fence).
func (s *Store) AttachFence(uid string, f Fence) bool { return s.table.attachFence(uid, f) }

// retire frees an allocation now, or parks it until its fences are done.
func (s *Store) retire(a *allocation) {
	if !fencesDone(a.fences) {
		s.log.Debug("reuse deferred until clients' GPU work is done", "name", a.name, "fences", len(a.fences))
		s.table.park(a)
		return
	}
	if len(a.fences) > 0 {
		s.log.Debug("fences already done at free", "name", a.name, "fences", len(a.fences))
	}
	releaseFences(a.fences)
	s.recycle(a.pool, a.dev, a.blocks...)
}

func fencesDone(fs []Fence) bool {
	for _, f := range fs {
		if !f.Done() {
			return false
		}
	}
	return true
}

func releaseFences(fs []Fence) {
	for _, f := range fs {
		f.Release()
	}
}

// ReapPending frees parked blocks whose fences are done and returns how many
// are still waiting.
func (s *Store) ReapPending() int {
	ready, waiting := s.table.unpark()
	for _, a := range ready {
		releaseFences(a.fences)
		s.recycle(a.pool, a.dev, a.blocks...)
	}
	return waiting
}

// RunReaper frees parked blocks as their fences complete, until ctx ends.
func (s *Store) RunReaper(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.ReapPending()
		}
	}
}
