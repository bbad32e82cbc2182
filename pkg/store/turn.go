package store

import (
	"context"
	"fmt"
	"sync"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// A turn is one registry script's place in the order of its tensor name.
// The socket server answers some creates and gets before their script has
// run (write-behind: the script follows, beside the connection's next
// requests); every later script on that name must run after it, or Redis
// would apply the agent's decisions out of order. Turns of different names
// do not wait for each other.
type turn struct {
	prev        *turn
	done        chan struct{} // closed once this script and every earlier one ran
	writeBehind bool          // answered before its script: a create or a get, which never frees
}

// order is the per-name queue of registry scripts.
type order struct {
	mu   sync.Mutex
	last map[string]*turn // name -> its last queued script
}

func newOrder() *order { return &order{last: map[string]*turn{}} }

// take queues a script on name.
func (o *order) take(name string) *turn {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.takeLocked(name, false)
}

func (o *order) takeLocked(name string, writeBehind bool) *turn {
	t := &turn{prev: o.last[name], done: make(chan struct{}), writeBehind: writeBehind}
	o.last[name] = t
	return t
}

// takeBehind queues a write-behind script on name when may, called with
// the name's last queued turn (nil when none), allows it. may runs under
// the order's lock: what it checks cannot change before the turn is queued.
func (o *order) takeBehind(name string, may func(last *turn) bool) (*turn, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !may(o.last[name]) {
		return nil, false
	}
	return o.takeLocked(name, true), true
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
		return fmt.Errorf("%w: an earlier registry write of this tensor is still pending: %w", errdefs.ErrUnavailable, ctx.Err())
	}
}

// end lets the next script on name run. A turn whose script never ran (its
// wait gave up) ends only once its predecessor has.
func (o *order) end(name string, t *turn) {
	if p := t.prev; p != nil {
		select {
		case <-p.done:
		default:
			go func() {
				<-p.done
				o.end(name, t)
			}()
			return
		}
		t.prev = nil
	}
	close(t.done)
	o.mu.Lock()
	if o.last[name] == t {
		delete(o.last, name)
	}
	o.mu.Unlock()
}

// run runs fn as name's next registry script.
func (o *order) run(ctx context.Context, name string, fn func() error) error {
	t := o.take(name)
	defer o.end(name, t)
	if err := t.wait(ctx); err != nil {
		return err
	}
	return fn()
}

// settle waits until the scripts queued on the names so far have run (every
// name when names is empty): reads through the agent then see what it
// answered before.
func (o *order) settle(ctx context.Context, names ...string) error {
	o.mu.Lock()
	var ts []*turn
	if len(names) == 0 {
		for _, t := range o.last {
			ts = append(ts, t)
		}
	}
	for _, n := range names {
		if t := o.last[n]; t != nil {
			ts = append(ts, t)
		}
	}
	o.mu.Unlock()
	for _, t := range ts {
		select {
		case <-t.done:
		case <-ctx.Done():
			return fmt.Errorf("%w: a registry write is still pending: %w", errdefs.ErrUnavailable, ctx.Err())
		}
	}
	return nil
}
