package store

import (
	"runtime"
	"testing"
	"time"
)

// Turns of one name ended out of order (connections release when they
// like) finish in order, each once all before it did, with no goroutine
// left waiting, and leave nothing queued.
func TestTurnsEndedOutOfOrder(t *testing.T) {
	o := newOrder()
	const n = 200
	ts := make([]*turn, n)
	for i := range ts {
		ts[i] = o.take("w", true)
	}
	before := runtime.NumGoroutine()
	for i := n - 1; i >= 1; i-- {
		o.end("w", ts[i])
		o.end("w", ts[i]) // a second end does nothing
	}
	for i, tt := range ts {
		select {
		case <-tt.done:
			t.Fatalf("turn %d finished before turn 0", i)
		default:
		}
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Fatalf("%d goroutines wait for earlier turns", g-before)
	}
	o.end("w", ts[0])
	for i, tt := range ts {
		select {
		case <-tt.done:
		case <-time.After(time.Second):
			t.Fatalf("turn %d never finished", i)
		}
	}
	if len(o.queued) != 0 || len(o.behind) != 0 || len(o.last) != 0 {
		t.Fatalf("left behind: queued %v behind %v last %v", o.queued, o.behind, o.last)
	}
}
