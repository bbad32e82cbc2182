package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// A turn is one registry script's place in the order of its tensor name.
// The socket server answers some creates and gets before their script has
// run (write-behind: the script follows, beside the connection's next
// requests); every later script on that name must run after it, or Redis
// would apply the agent's decisions out of order. Turns of different names
// do not wait for each other.
type turn struct {
	// prev is the name's turn queued before; nil once it ended, so that
	// ended turns are collected. Atomic: a cancelling release ends a turn
	// while its commit may be waiting on it.
	prev  atomic.Pointer[turn]
	done  chan struct{} // closed once this script and every earlier one ran
	keeps bool          // its script cannot free the tensor (a create, a get, a release of a live tensor): later gets need not wait for it
	// holder is set on a connection's written-behind get: until its script
	// starts, a release by the same holder cancels both (coalescing: a
	// reference taken and dropped before Redis heard of it never goes there).
	holder string
	state  atomic.Int32 // turnPending, turnStarted or turnCancelled
	ended  atomic.Bool  // end was called: a cancelled get's turn is ended by its release and again by its window
	// follower is the next turn of the name, ended before this one, that
	// waits for it (under the order's lock).
	follower *turn
}

const (
	turnPending int32 = iota
	turnStarted
	turnCancelled
)

// order is the per-name queue of registry scripts.
type order struct {
	mu   sync.Mutex
	last map[string]*turn  // name -> its last queued script
	open map[openKey]*turn // a holder's get of a name whose script has not started
	// behind counts each name's turns not yet ended that may still run a
	// script. Past maxBehind no more requests are answered ahead of their
	// scripts: they wait their turn, which bounds how far Redis may fall
	// behind the answers. A cancelled get runs none: it leaves the count at
	// once, though its turn ends only after the turns before it.
	behind map[string]int
	// queued counts each name's turns not yet ended, cancelled ones too.
	// Past maxTurns requests wait their turn as well: it bounds the memory
	// of the cancelled turns that pile up behind a get still in its window.
	queued map[string]int
	// creating is each name's written-behind create not yet ended: a
	// release waits for it, so a tensor created and released is in Redis
	// (and survives a crash of the agent) once the release is answered.
	creating map[string]*turn
}

const maxBehind = 256

// maxTurns bounds a name's turns not ended: ending a chain of them holds
// the order's lock, so it is sized well above what one get's window queues
// on a popular name, and no higher. A var for the test of the bound.
var maxTurns = 4096

func newOrder() *order {
	return &order{last: map[string]*turn{}, open: map[openKey]*turn{}, behind: map[string]int{}, queued: map[string]int{}, creating: map[string]*turn{}}
}

// openKey is a holder's cancellable get of a name.
type openKey struct{ name, holder string }

func newTurn(keeps bool) *turn { return &turn{done: make(chan struct{}), keeps: keeps} }

// take queues a script on name; keeps: it cannot free the tensor.
func (o *order) take(name string, keeps bool) *turn {
	t := newTurn(keeps) // made before the lock: every request of the name waits on it
	o.mu.Lock()
	defer o.mu.Unlock()
	o.queueLocked(name, t)
	return t
}

func (o *order) queueLocked(name string, t *turn) {
	t.prev.Store(o.last[name])
	o.last[name] = t
	o.queued[name]++
	o.behind[name]++
}

// leaveBehindLocked takes a turn out of name's count of scripts behind:
// once, as it is cancelled or, not cancelled, as it ends.
func (o *order) leaveBehindLocked(name string) {
	if o.behind[name]--; o.behind[name] <= 0 {
		delete(o.behind, name)
	}
}

// takeBehind queues a write-behind script on name when may, called with
// the name's last queued turn (nil when none), allows it. may runs under
// the order's lock: what it checks cannot change before the turn is queued.
// A holder's get passes the holder, so that its release can cancel it (see
// cancel); a create passes "".
func (o *order) takeBehind(name, holder string, may func(last *turn) bool) (*turn, bool) {
	t := newTurn(true)
	t.holder = holder
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.queueBehindLocked(name, t, may) {
		return nil, false
	}
	if holder != "" {
		o.open[openKey{name, holder}] = t
	}
	return t, true
}

// takeCreateBehind is takeBehind for a create, which releases wait for
// (createPending) from the moment it is queued.
func (o *order) takeCreateBehind(name string, may func(last *turn) bool) (*turn, bool) {
	t := newTurn(true)
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.queueBehindLocked(name, t, may) {
		return nil, false
	}
	o.creating[name] = t
	return t, true
}

func (o *order) queueBehindLocked(name string, t *turn, may func(last *turn) bool) bool {
	if o.behind[name] >= maxBehind || o.queued[name] >= maxTurns || !may(o.last[name]) {
		return false
	}
	o.queueLocked(name, t)
	return true
}

// createPending reports whether name's create was answered and its script
// has not ended. Call it with the lock held (from a may function).
func (o *order) createPending(name string) bool { return o.creating[name] != nil }

// begin reports whether t's script is to run: false once a release
// cancelled it. From then on it cannot be cancelled.
func (o *order) begin(name string, t *turn) bool {
	if t.holder == "" {
		return true
	}
	if !t.state.CompareAndSwap(turnPending, turnStarted) && t.state.Load() != turnStarted {
		return false
	}
	o.mu.Lock()
	o.forgetLocked(name, t)
	o.mu.Unlock()
	return true
}

// cancel cancels holder's get on name whose script has not started, and
// reports whether there was one: then the holder's reference never reached
// Redis and its release needs no script either.
//
// The cancelled turn ends here, not when its window passes: it has no script
// to wait for, and a popular name's released gets would otherwise fill its
// bound on scripts behind (maxBehind) for the length of the window.
func (o *order) cancel(name, holder string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := openKey{name, holder}
	t := o.open[k]
	if t == nil || !t.state.CompareAndSwap(turnPending, turnCancelled) {
		return false
	}
	delete(o.open, k)
	o.leaveBehindLocked(name)
	o.endLocked(name, t)
	return true
}

// forgetLocked takes t out of the cancellable gets.
func (o *order) forgetLocked(name string, t *turn) {
	if t.holder == "" {
		return
	}
	if k := (openKey{name, t.holder}); o.open[k] == t {
		delete(o.open, k)
	}
}

// wait returns once every earlier script on the name has run.
func (t *turn) wait(ctx context.Context) error {
	p := t.prev.Load()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		t.prev.Store(nil)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: an earlier registry write of this tensor is still pending: %w", errdefs.ErrUnavailable, ctx.Err())
	}
}

// end lets the next script on name run; a second call does nothing. A turn
// whose script never ran (its wait gave up, or a release cancelled it) ends
// only once its predecessor has.
func (o *order) end(name string, t *turn) {
	if t.ended.Load() {
		return // without the lock: a cancelled get's commit ends it again
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.endLocked(name, t)
}

func (o *order) endLocked(name string, t *turn) {
	if !t.ended.CompareAndSwap(false, true) {
		return
	}
	for t != nil {
		if p := t.prev.Load(); p != nil {
			if !closed(p.done) {
				// p's end finishes t too, in the same goroutine: turns of a
				// popular name end out of order (each connection releases
				// when it likes), and a goroutine per early one would queue
				// a chain of wake-ups.
				p.follower = t
				return
			}
			t.prev.Store(nil)
		}
		close(t.done) // under the lock: a follower's check of it cannot race it
		if o.last[name] == t {
			delete(o.last, name)
		}
		if o.queued[name]--; o.queued[name] <= 0 {
			delete(o.queued, name)
		}
		if t.state.Load() != turnCancelled {
			o.leaveBehindLocked(name) // a cancelled turn left at its cancel
		}
		if o.creating[name] == t {
			delete(o.creating, name)
		}
		o.forgetLocked(name, t)
		next := t.follower
		t.follower = nil
		t = next
	}
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// run runs fn as name's next registry script.
func (o *order) run(ctx context.Context, name string, fn func() error) error {
	return o.runTurn(ctx, name, false, fn)
}

// runKeeping is run for a script that cannot free the tensor (a get):
// written-behind requests after it need not wait for its outcome.
func (o *order) runKeeping(ctx context.Context, name string, fn func() error) error {
	return o.runTurn(ctx, name, true, fn)
}

func (o *order) runTurn(ctx context.Context, name string, keeps bool, fn func() error) error {
	t := o.take(name, keeps)
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
