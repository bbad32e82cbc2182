package store

import (
	"context"
	"time"
)

// Fence is GPU work that may still touch a block: the block is reused only
// once every fence attached to it is done (the seed's recordStream /
// event-deferred reuse). Release is called once the store no longer needs it.
type Fence interface {
	Done() bool
	Release()
}

// AttachFence adds a fence to a live tensor's memory; false when the tensor
// has no memory here (the caller keeps the fence).
func (s *Store) AttachFence(uid string, f Fence) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.blocks[uid]
	if !ok {
		return false
	}
	for _, g := range a.fences {
		if g == f {
			// The same event re-recorded: its latest record covers the
			// earlier one, so one attachment is enough.
			f.Release()
			return true
		}
	}
	a.fences = append(a.fences, f)
	s.blocks[uid] = a
	return true
}

// retire frees an allocation now, or parks it until its fences are done.
// Called without s.mu.
func (s *Store) retire(a allocation) {
	if !fencesDone(a.fences) {
		s.log.Debug("reuse deferred until clients' GPU work is done", "name", a.name, "fences", len(a.fences))
		s.mu.Lock()
		s.pending = append(s.pending, a)
		s.mu.Unlock()
		return
	}
	if len(a.fences) > 0 {
		s.log.Debug("fences already done at free", "name", a.name, "fences", len(a.fences))
	}
	releaseFences(a.fences)
	s.recycle(a.pool, a.dev, a.block)
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
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return 0
	}
	var ready []allocation
	keep := s.pending[:0]
	for _, a := range s.pending {
		if fencesDone(a.fences) {
			ready = append(ready, a)
		} else {
			keep = append(keep, a)
		}
	}
	s.pending = keep
	n := len(keep)
	s.mu.Unlock()
	for _, a := range ready {
		releaseFences(a.fences)
		s.recycle(a.pool, a.dev, a.block)
	}
	return n
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
