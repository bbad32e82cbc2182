package server_test

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
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
