package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A request context keeps the context contract whether or not anything
// asked for Done before it ended or its deadline passed.
func TestRequestContext(t *testing.T) {
	t.Run("ended before Done", func(t *testing.T) {
		c := newRequestContext(time.Hour)
		if c.Err() != nil {
			t.Fatal(c.Err())
		}
		if dl, ok := c.Deadline(); !ok || time.Until(dl) < 59*time.Minute {
			t.Fatalf("deadline %v %v", dl, ok)
		}
		c.end()
		if !errors.Is(c.Err(), context.Canceled) || !closed(c.Done()) {
			t.Fatalf("after end: %v, done %v", c.Err(), closed(c.Done()))
		}
	})
	t.Run("deadline after Done", func(t *testing.T) {
		c := newRequestContext(20 * time.Millisecond)
		done := c.Done()
		if closed(done) || c.Err() != nil {
			t.Fatal("done before its deadline")
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Done did not close at the deadline")
		}
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatal(c.Err())
		}
		c.end()
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("end after the deadline changed Err to %v", c.Err())
		}
	})
	t.Run("deadline without Done", func(t *testing.T) {
		c := newRequestContext(time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		if !errors.Is(c.Err(), context.DeadlineExceeded) || !closed(c.Done()) {
			t.Fatalf("past its deadline: %v", c.Err())
		}
	})
	t.Run("end after Done, and a child", func(t *testing.T) {
		c := newRequestContext(time.Hour)
		child, cancel := context.WithCancel(c)
		defer cancel()
		c.end()
		select {
		case <-child.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the child did not see the end")
		}
		if !errors.Is(c.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
			t.Fatalf("%v, child %v", c.Err(), child.Err())
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		for range 100 {
			c := newRequestContext(time.Hour)
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() { defer wg.Done(); _ = c.Done(); _ = c.Err() }()
			}
			c.end()
			wg.Wait()
			if !closed(c.Done()) || !errors.Is(c.Err(), context.Canceled) {
				t.Fatal("not ended")
			}
		}
	})
}
