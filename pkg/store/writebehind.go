package store

import (
	"context"
	"errors"
	"time"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// Write-behind: a socket create, or a connection's first get of a tensor,
// is answered as soon as the agent has decided it (the agent is the only
// writer of its prefix and owns the memory); its registry script runs
// right after, as the request's turn of the name (turn.go).

// Commit runs the registry script of a request answered before it. Call it
// once, after the answer is sent. Failures are the store's to handle: a
// Redis that went away is retried in the background until it is back
// (later requests on the name wait or answer unavailable meanwhile); a
// refusal, which only a registry changed behind the agent's back can cause,
// is logged and the tensor withdrawn.
type Commit func(ctx context.Context)

// retryWait bounds the pause between attempts of a registry write that
// found Redis down.
const retryWait = 2 * time.Second

// writesBehind reports whether a request may be answered before its
// registry write: the caller asked, the store allows it, the reference
// belongs to a connection's lease, no request id makes the caller read
// Redis, the registry holds no predecessor's records any more, and Redis
// is not known to be down (so that is a clear error).
func (s *Store) writesBehind(asked bool, holder, reqID string) bool {
	return asked && s.writeBehind && holder != "" && reqID == "" && s.reconciled.Load() && s.reg.Up()
}

// commitFunc is the Commit of turn t of name: write runs in that turn, now
// and, while Redis is unreachable, again in the background until it is
// back or the store closes. refused handles any other failure.
func (s *Store) commitFunc(name string, t *turn, write func(context.Context) error, refused func(error)) Commit {
	return func(ctx context.Context) {
		attempt := func(ctx context.Context) error {
			if err := t.wait(ctx); err != nil {
				return err
			}
			if !s.order.begin(name, t) {
				return nil // released before its script ran: nothing for Redis
			}
			return write(ctx)
		}
		err := attempt(ctx)
		if err == nil || !retryable(err) {
			if err != nil {
				refused(err)
			}
			s.order.end(name, t)
			return
		}
		s.log.Warn("registry write failed; retrying until Redis is back", "name", name, "err", err)
		go func() {
			defer s.order.end(name, t)
			for wait := 50 * time.Millisecond; retryable(err); wait = min(2*wait, retryWait) {
				select {
				case <-s.bg.Done():
					s.log.Error("registry write given up: the agent is stopping", "name", name, "err", err)
					return
				case <-time.After(wait):
				}
				ctx, cancel := context.WithTimeout(s.bg, 10*time.Second)
				err = attempt(ctx)
				cancel()
			}
			if err != nil {
				refused(err)
				return
			}
			s.log.Info("registry write done after a retry", "name", name)
		}()
	}
}

func retryable(err error) bool {
	return errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
