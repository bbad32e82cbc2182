package server_test

import (
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/osthread"
)

// A crowd of connections that all spoke at once leaves the threads their
// blocking reads took, and those the runtime started beside them; once it
// has gone, the agent ends them. Threads that were there when serving began
// and ended since are no floor.
func TestACrowdsThreadsAreGivenBack(t *testing.T) {
	release := holdThreads(4)
	sock, _ := startServer(t, nil, true)
	hello, _ := v1.EncodeRequest(&v1.Request{ID: 1, Op: v1.OpHello})
	call := func(c *net.UnixConn) {
		if _, err := c.Write(hello); err != nil {
			t.Error(err)
			return
		}
		if _, err := c.Read(make([]byte, 4096)); err != nil {
			t.Error(err)
		}
	}
	one, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	call(one) // serving has begun
	held := osthread.Count()
	release()
	for end := time.Now().Add(5 * time.Second); osthread.Count() > held-4 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // past the hot wait: the connection is parked
	before := osthread.Count()

	const crowd = 1500
	conns := make([]*net.UnixConn, crowd)
	for i := range conns {
		if conns[i], err = net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); call(c) }()
	}
	// Blocking system calls beside the crowd: the runtime starts threads
	// for them that stay idle after, which only the agent's trim ends.
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts := syscall.Timespec{Nsec: int64(250 * time.Millisecond)}
			syscall.Nanosleep(&ts, nil)
		}()
	}
	wg.Wait()
	peak := osthread.Count()
	if peak < before+16 {
		t.Fatalf("a crowd of %d connections and 32 blocked system calls took %d threads, from %d: the test needs a crowd of threads", crowd, peak, before)
	}
	for _, c := range conns {
		c.Close()
	}
	now := osthread.Count()
	for end := time.Now().Add(5 * time.Second); now > before+2 && time.Now().Before(end); now = osthread.Count() {
		time.Sleep(10 * time.Millisecond)
	}
	if now > before+2 {
		t.Fatalf("after the crowd closed: %d threads, %d before it (%d at its peak)", now, before, peak)
	}
	call(one) // and the agent still serves
}

// holdThreads holds n threads (each locked to a goroutine that waits) until
// release is called, which ends them.
func holdThreads(n int) (release func()) {
	done := make(chan struct{})
	var started sync.WaitGroup
	for range n {
		started.Add(1)
		go func() {
			runtime.LockOSThread()
			started.Done()
			<-done // returning locked ends the thread
		}()
	}
	started.Wait()
	return func() { close(done) }
}
