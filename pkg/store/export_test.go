package store

import "context"

// HoldTurn queues a script on name that lasts until release is closed: a
// stand-in for a delete or release in flight. started is closed once it runs.
func (s *Store) HoldTurn(name string, started, release chan struct{}) {
	t := s.order.take(name, false)
	go func() {
		_ = t.wait(context.Background())
		close(started)
		<-release
		s.order.end(name, t)
	}()
}

// QueuedTurns is the number of name's scripts queued and not ended.
func (s *Store) QueuedTurns(name string) int {
	s.order.mu.Lock()
	defer s.order.mu.Unlock()
	return s.order.queued[name]
}

// BehindScripts is the number of name's turns not ended that may still run
// a script (a cancelled get's turn runs none).
func (s *Store) BehindScripts(name string) int {
	s.order.mu.Lock()
	defer s.order.mu.Unlock()
	return s.order.behind[name]
}

// SetMaxTurns sets the bound on a name's turns not ended (cancelled ones
// included) until the test ends.
func SetMaxTurns(t interface{ Cleanup(func()) }, n int) {
	old := maxTurns
	maxTurns = n
	t.Cleanup(func() { maxTurns = old })
}
