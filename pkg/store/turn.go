package store

import (
	"context"
	"fmt"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// A turn is one registry script's place in the order of its tensor name.
// The socket server answers some creates and gets before their script has
// run (the script follows, beside the connection's next requests); every
// later script on that name must run after it, or Redis would apply the
// agent's decisions out of order. Turns of different names do not wait for
// each other.
type turn struct {
	prev  *turn
	done  chan struct{} // closed once this script and every earlier one ran
	early bool          // answered before its script: a create or a get, which never frees
}

// takeTurnLocked queues a script on name; the caller holds s.mu. early: the
// request is answered before the script runs.
func (s *Store) takeTurnLocked(name string, early bool) *turn {
	t := &turn{prev: s.turns[name], done: make(chan struct{}), early: early}
	s.turns[name] = t
	return t
}

func (s *Store) takeTurn(name string) *turn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeTurnLocked(name, false)
}

// wait returns once every earlier script on the name has run.
func (t *turn) wait(ctx context.Context) error {
	p := t.prev
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		t.prev = nil // let finished turns be collected
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: an earlier registry write of this tensor is still pending: %v", errdefs.ErrUnavailable, ctx.Err())
	}
}

// end lets the next script on name run. A turn whose script never ran (its
// wait gave up) ends only once its predecessor has.
func (s *Store) end(name string, t *turn) {
	if p := t.prev; p != nil {
		select {
		case <-p.done:
		default:
			go func() {
				<-p.done
				s.end(name, t)
			}()
			return
		}
		t.prev = nil
	}
	close(t.done)
	s.mu.Lock()
	if s.turns[name] == t {
		delete(s.turns, name)
	}
	s.mu.Unlock()
}

// inTurn runs fn as name's next registry script.
func (s *Store) inTurn(ctx context.Context, name string, fn func() error) error {
	t := s.takeTurn(name)
	defer s.end(name, t)
	if err := t.wait(ctx); err != nil {
		return err
	}
	return fn()
}

// settle waits until the scripts queued on the names so far have run (every
// name when names is empty): reads through the agent then see what it
// answered before.
func (s *Store) settle(ctx context.Context, names ...string) error {
	s.mu.Lock()
	var ts []*turn
	if len(names) == 0 {
		for _, t := range s.turns {
			ts = append(ts, t)
		}
	}
	for _, n := range names {
		if t := s.turns[n]; t != nil {
			ts = append(ts, t)
		}
	}
	s.mu.Unlock()
	for _, t := range ts {
		select {
		case <-t.done:
		case <-ctx.Done():
			return fmt.Errorf("%w: a registry write is still pending: %v", errdefs.ErrUnavailable, ctx.Err())
		}
	}
	return nil
}
