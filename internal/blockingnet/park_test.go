package blockingnet

import (
	"errors"
	"net"
	"os"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// parkedPair is a detached connection and the raw descriptor of its peer.
func parkedPair(t *testing.T) (*Conn, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "parked")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Detach(nc.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	return c, fds[1]
}

func TestParkerWakesOnReadinessAndDeadline(t *testing.T) {
	p, err := NewParker()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ready, peer := parkedPair(t)
	defer ready.Close()
	defer unix.Close(peer)
	late, peer2 := parkedPair(t)
	defer late.Close()
	defer unix.Close(peer2)
	got := make(chan error, 2)
	if err := p.Watch(ready, time.Now().Add(time.Hour), func(err error) { got <- err }); err != nil {
		t.Fatal(err)
	}
	if err := p.Watch(late, time.Now().Add(50*time.Millisecond), func(err error) { got <- err }); err != nil {
		t.Fatal(err)
	}
	unix.Write(peer, []byte{1})
	if err := <-got; err != nil {
		t.Fatalf("readable: %v", err)
	}
	if err := <-got; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past its deadline: %v", err)
	}
	p.Close()
	if err := p.Watch(ready, time.Time{}, func(error) {}); !errors.Is(err, ErrParkerClosed) {
		t.Fatalf("a watch on a closed parker: %v", err)
	}
}

// A crowd that becomes readable at once (closing together) is run a few
// callbacks ahead at a time: the Parker does not start a goroutine for each
// before the first has run, and the runtime keeps every goroutine it made.
func TestParkerCrowdStartsFewGoroutines(t *testing.T) {
	p, err := NewParker()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const crowd = 4000
	conns := make([]*Conn, crowd)
	peers := make([]int, crowd)
	for i := range conns {
		conns[i], peers[i] = parkedPair(t)
	}
	var mu sync.Mutex
	most := uint64(0)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		if err := p.Watch(c, time.Time{}, func(error) {
			defer wg.Done()
			c.Close() // what a closed connection's callback does first
			m := []metrics.Sample{{Name: "/sched/goroutines/runnable:goroutines"}}
			metrics.Read(m)
			mu.Lock()
			most = max(most, m[0].Value.Uint64())
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, fd := range peers {
		unix.Close(fd)
	}
	wg.Wait()
	if most > 2*maxStarting {
		t.Fatalf("%d callbacks at once: up to %d goroutines waited to run (at most %d should)", crowd, most, maxStarting)
	}
	t.Logf("at most %d goroutines waited to run", most)
}
