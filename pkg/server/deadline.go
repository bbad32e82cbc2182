package server

import (
	"context"
	"sync"
	"time"
)

// requestContext is a request's context: its deadline is set when the
// request starts, but the timer behind Done is made only when something
// asks for Done (a Redis call does). Most requests are answered from the
// agent's own table and never ask, and context.WithTimeout's timer, made
// and stopped for each of them, was a large part of the agent's work on a
// first get (docs/benchmarks.md). end cancels it; the handler's caller
// calls it once the handler returned.
type requestContext struct {
	deadline time.Time
	mu       sync.Mutex
	inner    context.Context // made by the first Done
	cancel   context.CancelFunc
	ended    bool
}

func newRequestContext(timeout time.Duration) *requestContext {
	return &requestContext{deadline: time.Now().Add(timeout)}
}

// endedContext stands in for the timer of a context ended before anyone
// asked for Done.
var endedContext = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func (c *requestContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *requestContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner == nil {
		if c.ended {
			c.inner = endedContext
		} else {
			c.inner, c.cancel = context.WithDeadline(context.Background(), c.deadline)
		}
	}
	return c.inner.Done()
}

func (c *requestContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.inner != nil:
		return c.inner.Err()
	case c.ended:
		return context.Canceled
	case !time.Now().Before(c.deadline):
		return context.DeadlineExceeded
	}
	return nil
}

func (c *requestContext) Value(any) any { return nil }

// end cancels the context, and stops its timer if one was made.
func (c *requestContext) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	if c.cancel != nil {
		c.cancel()
	}
}
