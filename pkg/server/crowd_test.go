package server_test

import (
	"net"
	"sync"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/osthread"
)

// A crowd of connections that all spoke at once leaves the threads their
// blocking reads took; once it has gone, the agent ends them.
func TestACrowdsThreadsAreGivenBack(t *testing.T) {
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
	call(one)
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
	wg.Wait()
	peak := osthread.Count()
	if peak < before+32 {
		t.Fatalf("%d connections answered at once took %d threads, from %d: the test needs a crowd of threads", crowd, peak, before)
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
