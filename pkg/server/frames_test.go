package server_test

import (
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/server"
)

// Frames of every size arrive whole, however they are cut: many pipelined
// in one write, one larger than any read buffer, and one sent in pieces.
func TestFramesOfEverySize(t *testing.T) {
	sock, _ := startServer(t, nil, true)
	p := dialPeer(t, sock)
	var pipelined []byte
	const n = 300
	for i := range n {
		f, _ := v1.EncodeRequest(&v1.Request{ID: uint64(i + 1), Op: v1.OpStat, Name: "no.such"})
		pipelined = append(pipelined, f...)
	}
	if len(pipelined) < 8<<10 {
		t.Fatalf("the pipelined frames are %d bytes: too few to fill a small buffer", len(pipelined))
	}
	if _, err := p.c.Write(pipelined); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		resp, _ := p.read()
		if resp.ID != uint64(i+1) || resp.Error == nil || resp.Error.Code != "not_found" {
			t.Fatalf("answer %d: id %d, error %+v", i+1, resp.ID, resp.Error)
		}
	}
	// 200 KiB: past the large buffer too. Its name is refused, the
	// connection stays.
	big := &v1.Request{ID: 1000, Op: v1.OpStat, Name: strings.Repeat("x", 200<<10)}
	if resp, _ := p.call(big); resp.ID != 1000 || resp.Error == nil || resp.Error.Code != "invalid_argument" {
		t.Fatalf("a 200 KiB frame: id %d, error %+v", resp.ID, resp.Error)
	}
	// 10 KiB in three pieces, with pauses that park the connection.
	f, _ := v1.EncodeRequest(&v1.Request{ID: 1001, Op: v1.OpStat, Name: strings.Repeat("y", 10<<10)})
	for _, piece := range [][]byte{f[:7], f[7 : 5<<10], f[5<<10:]} {
		if _, err := p.c.Write(piece); err != nil {
			t.Fatal(err)
		}
		time.Sleep(80 * time.Millisecond)
	}
	if resp, _ := p.read(); resp.ID != 1001 || resp.Error == nil || resp.Error.Code != "invalid_argument" {
		t.Fatalf("a frame in pieces: id %d, error %+v", resp.ID, resp.Error)
	}
	if resp, _ := p.call(&v1.Request{ID: 1002, Op: v1.OpHello}); resp.ID != 1002 || resp.Error != nil {
		t.Fatalf("hello after: %+v", resp)
	}
}

// A connection waiting for the rest of a frame holds a small buffer: a
// thousand slow senders cost a few MiB, not a 64 KiB buffer each.
func TestSlowSendersHoldSmallBuffers(t *testing.T) {
	sock, _ := startServer(t, nil, true)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	hello, _ := v1.EncodeRequest(&v1.Request{ID: 1, Op: v1.OpHello})
	before := heap()
	const slow = 1000
	conns := make([]*net.UnixConn, 0, slow)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range slow {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		c.Write(hello[:5])
		conns = append(conns, c)
	}
	time.Sleep(300 * time.Millisecond) // every connection has read its part and parked
	per := int64(heap()-before) / slow
	if per > 16<<10 {
		t.Fatalf("a connection with part of a frame holds %d bytes of heap", per)
	}
	t.Logf("%d bytes of heap per slow sender", per)
}

// A hot connection that polls for its next request (WithHotSpin) reads
// what comes within the spin, descriptors and pipelined frames included;
// a connection that finds every polling slot taken waits in a blocking
// read; a spin that ends without a request blocks after it; and a spin
// ends at once when its peer goes away or the server stops.
func TestHotSpin(t *testing.T) {
	sock, _, srv, stop := serve(t, server.WithHotSpin(30*time.Second, 1))
	p := dialPeer(t, sock)
	// The first request waits parked (a new connection); after it, each
	// answer is followed by a spin that the next request arrives in.
	for i := range 20 {
		if resp, _ := p.call(&v1.Request{ID: uint64(i + 1), Op: v1.OpHello}); resp.ID != uint64(i+1) || resp.Error != nil {
			t.Fatalf("hello %d: %+v", i+1, resp)
		}
	}
	created, fds := p.call(&v1.Request{ID: 100, Op: v1.OpCreate, Name: "spin.a", DType: "f32", Shape: []int64{16}})
	if created.Error != nil || fds != 1 {
		t.Fatalf("create: %+v, %d descriptors", created.Error, fds)
	}
	var pipelined []byte
	for i := range 50 {
		f, _ := v1.EncodeRequest(&v1.Request{ID: uint64(200 + i), Op: v1.OpStat, Name: "spin.a"})
		pipelined = append(pipelined, f...)
	}
	if _, err := p.c.Write(pipelined); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if resp, _ := p.read(); resp.ID != uint64(200+i) || resp.Error != nil {
			t.Fatalf("pipelined stat %d: %+v", i, resp)
		}
	}
	caught, missed, _ := srv.HotSpins()
	if caught < 21 || missed != 0 {
		t.Fatalf("after 22 requests on one connection: %d caught by the spin, %d missed; want at least 21 and none", caught, missed)
	}
	// p holds the one polling slot: q waits in a blocking read, and is answered.
	q := dialPeer(t, sock)
	for i := range 5 {
		if resp, _ := q.call(&v1.Request{ID: uint64(i + 1), Op: v1.OpHello}); resp.ID != uint64(i+1) || resp.Error != nil {
			t.Fatalf("hello %d on a second connection: %+v", i+1, resp)
		}
	}
	if c, _, _ := srv.HotSpins(); c != caught {
		t.Fatalf("a connection with no polling slot was counted as polling: %d caught, was %d", c, caught)
	}
	// p's peer goes away during its spin: the end of its stream is no
	// request, and the slot is free again, for q.
	before, _, _ := srv.HotSpins()
	p.c.Close()
	time.Sleep(200 * time.Millisecond)
	if c, _, _ := srv.HotSpins(); c != before {
		t.Fatalf("the end of a stream was counted as a request caught: %d, was %d", c, before)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		before, _, _ := srv.HotSpins()
		if resp, _ := q.call(&v1.Request{ID: 9, Op: v1.OpHello}); resp.Error != nil {
			t.Fatal(resp.Error)
		}
		if resp, _ := q.call(&v1.Request{ID: 10, Op: v1.OpHello}); resp.Error != nil {
			t.Fatal(resp.Error)
		}
		if after, _, _ := srv.HotSpins(); after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the polling slot of a connection whose peer closed was not given back")
		}
	}
	// The server stops while q spins: Serve returns without waiting it out.
	start := time.Now()
	stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Serve took %v to return with a connection in a 30 s spin", d)
	}
}

// A spin that ends without a request is counted missed, and the request
// that comes later is read by the blocking read after it.
func TestHotSpinMissed(t *testing.T) {
	sock, _, srv, _ := serve(t, server.WithHotSpin(time.Millisecond, 1))
	p := dialPeer(t, sock)
	for i := range 3 {
		time.Sleep(20 * time.Millisecond) // within the hot wait, past the spin
		if resp, _ := p.call(&v1.Request{ID: uint64(i + 1), Op: v1.OpHello}); resp.ID != uint64(i+1) || resp.Error != nil {
			t.Fatalf("hello %d: %+v", i+1, resp)
		}
	}
	// The spins after the first two answers ended before the next request
	// (the third one's may still be running).
	if caught, missed, _ := srv.HotSpins(); caught != 0 || missed < 2 {
		t.Fatalf("three requests 20 ms apart with a 1 ms spin: %d caught, %d missed; want 0 and at least 2", caught, missed)
	}
}

// spinGate is a SpinGate whose answer the test sets; it records what it
// was told about the polls.
type spinGate struct {
	mu    sync.Mutex
	allow bool
	err   error
	calls int
	wasOn bool
}

func (g *spinGate) set(allow bool, err error) {
	g.mu.Lock()
	g.allow, g.err = allow, err
	g.mu.Unlock()
}

func (g *spinGate) Allow(on bool) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls++
	g.wasOn = on
	return g.allow, g.err
}

// With WithHotSpinGate, polls run only while the gate allows them: they
// start off, follow the gate's answer every 100 ms (a spin in progress
// stops when it closes), and stay off while the gate fails. The gate is
// told whether polls were on. Requests are answered the same either way.
func TestHotSpinGate(t *testing.T) {
	g := &spinGate{}
	sock, _, srv, _ := serve(t, server.WithHotSpin(30*time.Second, 2), server.WithHotSpinGate(g))
	p := dialPeer(t, sock)
	id := uint64(0)
	hello := func() {
		t.Helper()
		id++
		if resp, _ := p.call(&v1.Request{ID: id, Op: v1.OpHello}); resp.ID != id || resp.Error != nil {
			t.Fatalf("hello %d: %+v", id, resp)
		}
	}
	// waitGate waits until the server has asked the gate after set.
	waitGate := func(want bool) {
		t.Helper()
		g.mu.Lock()
		calls := g.calls
		g.mu.Unlock()
		deadline := time.Now().Add(10 * time.Second)
		for {
			g.mu.Lock()
			asked := g.calls >= calls+2
			g.mu.Unlock()
			if asked && srv.HotSpinOn() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gate: on=%v, want %v", srv.HotSpinOn(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if srv.HotSpinOn() {
		t.Fatal("polls on before the gate was asked")
	}
	waitGate(false)
	for range 10 {
		hello()
	}
	caught, missed, skipped := srv.HotSpins()
	if caught != 0 || missed != 0 || skipped < 9 {
		t.Fatalf("gate closed: %d caught, %d missed, %d skipped; want none polled and at least 9 skipped", caught, missed, skipped)
	}
	g.mu.Lock()
	if g.wasOn {
		t.Error("the gate was told polls were on while they were off")
	}
	g.mu.Unlock()
	g.set(true, nil)
	waitGate(true)
	hello() // may have been waiting in a blocking read since before
	for range 10 {
		hello()
	}
	if c, _, _ := srv.HotSpins(); c < 10 {
		t.Fatalf("gate open: %d polls caught a request, want at least 10", c)
	}
	waitGate(true)
	g.mu.Lock()
	if !g.wasOn {
		t.Error("the gate was told polls were off while they were on")
	}
	g.mu.Unlock()
	// The gate closes during a 30 s spin: the spin ends (missed), and the
	// polls after it are skipped.
	_, missedBefore, _ := srv.HotSpins()
	g.set(false, nil)
	waitGate(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, m, _ := srv.HotSpins(); m > missedBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a spin in progress went on after the gate closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, _, before := srv.HotSpins()
	for range 5 {
		hello()
	}
	if _, _, after := srv.HotSpins(); after-before < 5 {
		t.Fatalf("after the gate closed, %d of 5 polls were skipped", after-before)
	}
	// A gate that fails keeps polls off, whatever it answers.
	g.set(true, nil)
	waitGate(true)
	g.set(true, errors.New("no /proc/pressure/cpu"))
	waitGate(false)
	hello()
}
