package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// The delay line holds connections' written-behind gets through the
// coalescing window (WithCoalesce): one goroutine and one timer serve them
// all, so a get released within the window (get, use, release: the usual
// pattern) costs no goroutine, no timer and no Redis round trip of its own.
// A get still held when its window passed gets its script then.
type delayLine struct {
	mu   sync.Mutex
	q    []delayed // in due order: every entry waits the same window
	kick chan struct{}
	// asleep: an entry went into an empty line and the line's goroutine,
	// which then waits with no timer, has not been woken for it yet (wake).
	asleep atomic.Bool
	// writing counts scripts started from the line and not ended (flush
	// waits for them).
	writing sync.WaitGroup
}

// delayed is a get's script waiting for its window.
type delayed struct {
	due  time.Time
	name string
	t    *turn
	run  Commit
}

// behindTimeout bounds one attempt of a script run from the delay line.
const behindTimeout = 10 * time.Second

func newDelayLine() *delayLine { return &delayLine{kick: make(chan struct{}, 1)} }

// add queues e; the line's goroutine runs it once e.due passed. When e
// goes into an empty line, that goroutine waits with no timer and must be
// woken: now, or with later set at the caller's next wake. Waking a parked
// goroutine may wake a thread and a CPU, which a get's answer need not
// wait for; the window is far longer than the time until the wake.
func (d *delayLine) add(e delayed, later bool) {
	d.mu.Lock()
	first := len(d.q) == 0
	d.q = append(d.q, e)
	d.mu.Unlock()
	if first {
		d.asleep.Store(true)
		if !later {
			d.wake()
		}
	}
}

// wake wakes the line's goroutine for the entries that went into an empty
// line since the last wake.
func (d *delayLine) wake() {
	if !d.asleep.Load() || !d.asleep.Swap(false) {
		return
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// take removes the entries due by now (all with all set), and says how
// long until the next one is due (0: none queued).
func (d *delayLine) take(now time.Time, all bool) ([]delayed, time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := 0
	for i < len(d.q) && (all || !d.q[i].due.After(now)) {
		i++
	}
	due := append([]delayed(nil), d.q[:i]...)
	rest := copy(d.q, d.q[i:])
	clear(d.q[rest:])
	d.q = d.q[:rest]
	if rest == 0 {
		return due, 0
	}
	return due, max(d.q[0].due.Sub(now), time.Microsecond)
}

// serve runs due entries with start until ctx ends.
func (d *delayLine) serve(ctx context.Context, start func(delayed)) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		due, next := d.take(time.Now(), false)
		for _, e := range due {
			start(e)
		}
		if next > 0 {
			timer.Reset(next)
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-d.kick:
			timer.Stop() // (go >= 1.23: no stale tick after Stop or Reset)
		case <-timer.C:
		}
	}
}

// AfterAnswer is the store's work that may wait until the answer of a
// request was written: it wakes the goroutine of the coalescing window
// for gets with WakeAfterAnswer that went into an empty window. It costs
// an atomic load when there is nothing to do.
func (s *Store) AfterAnswer() { s.delays.wake() }

// startDelayed starts a get's script, unless a release cancelled it within
// the window (nothing for Redis; the release ended its turn).
func (s *Store) startDelayed(e delayed) {
	if e.t.state.Load() == turnCancelled {
		return
	}
	s.delays.writing.Add(1)
	go func() {
		defer s.delays.writing.Done()
		ctx, cancel := context.WithTimeout(context.Background(), behindTimeout)
		defer cancel()
		e.run(ctx)
	}()
}

// FlushBehind starts the scripts of gets still in their coalescing window
// at once and waits for those started from the window to end, so that
// Redis counts every reference handed out so far (before a hand-over or a
// stop).
func (s *Store) FlushBehind(ctx context.Context) error {
	due, _ := s.delays.take(time.Now(), true)
	for _, e := range due {
		s.startDelayed(e)
	}
	done := make(chan struct{})
	go func() { s.delays.writing.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
