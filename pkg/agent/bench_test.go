package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/blockingnet"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/agent"
	"github.com/memcuda/memcuda/pkg/backend/gpu"
	"github.com/memcuda/memcuda/pkg/client"
)

// The whole agent (in this process, so that -cpuprofile sees it) answering
// precomputed request frames on its socket, the way a client that has no
// work of its own would see it: a create from a warm pool (bf16 256x1024,
// the benchmark's size) and a warm get. The baseline of the run is the
// same round trip through a bare echo server that serves its connection
// the same way (a goroutine on a locked thread, blocking reads): what is
// left over it is the agent's work. Each sub-benchmark reports its p50 and
// p99 (the ns/op column also holds the untimed release and delete).
func BenchmarkSocket(b *testing.B) {
	srv := redistest.StartVolatile(b)
	b.Run("echo", func(b *testing.B) {
		c := dialRaw(b, startEcho(b, -1))
		frame := mustFrame(b, &v1.Request{ID: 1, Op: v1.OpCreate, Name: "b.c.1", DType: "bf16", Shape: []int64{256, 1024}})
		timeRoundTrips(b, c, func(int) []byte { return frame }, nil)
	})
	b.Run("echo-fd", func(b *testing.B) {
		// The baseline of get-cold: every answer carries a descriptor.
		c := dialRaw(b, startEcho(b, memfd(b)))
		frame := mustFrame(b, &v1.Request{ID: 1, Op: v1.OpGet, Name: "b.cold.1"})
		timeRoundTrips(b, c, func(int) []byte { return frame }, nil)
	})
	modes := []v1.IPCMode{v1.ModeHost}
	if gpu.Available() {
		modes = append(modes, v1.ModeVMM, v1.ModeLegacy)
	}
	for _, mode := range modes {
		sock := startAgent(b, srv, mode)
		b.Run(string(mode)+"/create", func(b *testing.B) {
			c := dialRaw(b, sock)
			c.roundTrip(b, mustFrame(b, &v1.Request{ID: 1, Op: v1.OpHello}))
			timeRoundTrips(b, c, func(i int) []byte {
				return mustFrame(b, &v1.Request{ID: 2, Op: v1.OpCreate, Name: fmt.Sprintf("b.c.%d", i), DType: "bf16", Shape: []int64{256, 1024}})
			}, func(i int) {
				// Untimed: the block goes back to the pool, so every create is warm.
				name := fmt.Sprintf("b.c.%d", i)
				c.roundTrip(b, mustFrame(b, &v1.Request{ID: 3, Op: v1.OpRelease, Name: name}))
				c.roundTrip(b, mustFrame(b, &v1.Request{ID: 4, Op: v1.OpDelete, Name: name}))
			})
		})
		b.Run(string(mode)+"/get-warm", func(b *testing.B) {
			c := dialRaw(b, sock)
			c.roundTrip(b, mustFrame(b, &v1.Request{ID: 1, Op: v1.OpCreate, Name: "b.get", DType: "f32", Shape: []int64{1024}}))
			get := mustFrame(b, &v1.Request{ID: 2, Op: v1.OpGet, Name: "b.get"})
			rel := mustFrame(b, &v1.Request{ID: 3, Op: v1.OpRelease, Name: "b.get"})
			timeRoundTrips(b, c, func(int) []byte { return get }, func(int) { c.roundTrip(b, rel) })
			c.roundTrip(b, mustFrame(b, &v1.Request{ID: 4, Op: v1.OpDelete, Name: "b.get"}))
		})
		b.Run(string(mode)+"/get-first", func(b *testing.B) {
			// The connection's first reference each time (a get, use,
			// release loop), its segment's descriptor already sent.
			c := dialRaw(b, sock)
			c.roundTrip(b, mustFrame(b, &v1.Request{ID: 1, Op: v1.OpCreate, Name: "b.first", DType: "f32", Shape: []int64{1024}}))
			get := mustFrame(b, &v1.Request{ID: 2, Op: v1.OpGet, Name: "b.first"})
			rel := mustFrame(b, &v1.Request{ID: 3, Op: v1.OpRelease, Name: "b.first"})
			c.roundTrip(b, rel)
			timeRoundTrips(b, c, func(int) []byte { return get }, func(int) { c.roundTrip(b, rel) })
			c.roundTrip(b, mustFrame(b, &v1.Request{ID: 4, Op: v1.OpDelete, Name: "b.first"}))
		})
		b.Run(string(mode)+"/get-cold", func(b *testing.B) {
			// A get of a tensor whose segment this connection never had:
			// the answer carries the segment's descriptor (a cold get; its
			// baseline is echo-fd). Each name lies in a segment of its own
			// (past the pool's shared sizes); a connection gets each once,
			// then a new one, greeted untimed, starts over.
			const names = 32
			owner := dialRaw(b, sock)
			owner.roundTrip(b, mustFrame(b, &v1.Request{ID: 1, Op: v1.OpHello}))
			gets, rels := make([][]byte, names), make([][]byte, names)
			for i := range names {
				name := fmt.Sprintf("b.cold.%d", i)
				owner.roundTrip(b, mustFrame(b, &v1.Request{ID: 2, Op: v1.OpCreate, Name: name, DType: "f32", Shape: []int64{3 << 20}}))
				gets[i] = mustFrame(b, &v1.Request{ID: 3, Op: v1.OpGet, Name: name})
				rels[i] = mustFrame(b, &v1.Request{ID: 4, Op: v1.OpRelease, Name: name})
			}
			fresh := func() *rawConn {
				c := dialRaw(b, sock)
				c.roundTrip(b, mustFrame(b, &v1.Request{ID: 1, Op: v1.OpHello}))
				return c
			}
			c := fresh()
			timeRoundTrips(b, c, func(i int) []byte { return gets[i%names] }, func(i int) {
				c.roundTrip(b, rels[i%names])
				if (i+1)%names == 0 {
					c.close()
					*c = *fresh()
				}
			})
			for i := range names {
				owner.roundTrip(b, rels[i])
				owner.roundTrip(b, mustFrame(b, &v1.Request{ID: 5, Op: v1.OpDelete, Name: fmt.Sprintf("b.cold.%d", i)}))
			}
		})
	}
}

// timeRoundTrips sends frame(i) and reads its answer b.N times (after a
// warm-up), each followed by the untimed after, and reports the p50 and
// p99 of the round trips (the frame is made before its timing starts).
func timeRoundTrips(b *testing.B, c *rawConn, frame func(i int) []byte, after func(i int)) {
	const warm = 200
	took := make([]time.Duration, 0, b.N)
	for i := 0; i < warm+b.N; i++ {
		f := frame(i)
		t0 := time.Now()
		c.roundTrip(b, f)
		if d := time.Since(t0); i >= warm {
			took = append(took, d)
		}
		if after != nil {
			after(i)
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds())/1e3, "p50-us")
	b.ReportMetric(float64(took[len(took)*99/100].Nanoseconds())/1e3, "p99-us")
}

func mustFrame(b *testing.B, req *v1.Request) []byte {
	frame, err := v1.EncodeRequest(req)
	if err != nil {
		b.Fatal(err)
	}
	return frame
}

// rawConn is a client without work of its own: it writes a frame and
// blocks in recvmsg until the whole answer is there, closing any
// descriptors that come with it.
type rawConn struct {
	raw *blockingnet.Conn
	buf []byte
	oob []byte
}

func (c *rawConn) close() { c.raw.Close() }

func dialRaw(b *testing.B, sock string) *rawConn {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := blockingnet.Detach(c) // reads wait in the kernel, as the agent's do
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { raw.Close() })
	return &rawConn{raw: raw, buf: make([]byte, 64<<10), oob: make([]byte, unix.CmsgSpace(4*v1.MaxFDs))}
}

func (c *rawConn) roundTrip(b *testing.B, frame []byte) {
	if _, err := unix.Write(c.raw.FD(), frame); err != nil {
		b.Fatal(err)
	}
	got := 0
	for {
		n, oobn, _, _, err := unix.Recvmsg(c.raw.FD(), c.buf[got:], c.oob, 0)
		if err != nil || n == 0 {
			b.Fatalf("read answer: %v (%d bytes)", err, n)
		}
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(c.oob[:oobn])
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		}
		got += n
		if got >= v1.HeaderSize {
			h, err := v1.ParseHeader(c.buf[:got])
			if err != nil {
				b.Fatal(err)
			}
			if got >= v1.HeaderSize+h.BodyLen {
				if got > v1.HeaderSize+h.BodyLen {
					b.Fatalf("%d bytes more than one answer", got-v1.HeaderSize-h.BodyLen)
				}
				// Decoding the answer would be client work: only look for a failure.
				if body := c.buf[v1.HeaderSize:got]; bytes.Contains(body, []byte(`"error":`)) {
					b.Fatalf("agent answered %s", body)
				}
				return
			}
		}
	}
}

// memfd is a descriptor to pass in answers, closed when the benchmark ends.
func memfd(b *testing.B) int {
	fd, err := unix.MemfdCreate("memcuda-bench", unix.MFD_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	return fd
}

// startEcho serves one connection at a time the way the agent does (a
// goroutine on a locked OS thread, a detached blocking descriptor),
// answering each frame with a response frame of the same body, and with
// the descriptor fd when it is not -1.
func startEcho(b *testing.B, fd int) string {
	var oob []byte
	nfd := 0
	if fd >= 0 {
		oob, nfd = unix.UnixRights(fd), 1
	}
	sock := filepath.Join(b.TempDir(), "echo.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return
			}
			go func() {
				runtime.LockOSThread()
				raw, err := blockingnet.Detach(c)
				if err != nil {
					return
				}
				defer raw.Close()
				r := bufio.NewReaderSize(raw, 64<<10)
				for {
					_, body, err := v1.ReadFrame(r)
					if err != nil {
						return
					}
					frame, _ := v1.AppendFrame(nil, v1.KindResponse, nfd, body)
					if _, err := raw.WriteMsg(frame, oob); err != nil {
						return
					}
				}
			}()
		}
	}()
	return sock
}

// startAgent runs an agent of the given backend in this process until the
// benchmark ends, and waits until it answers on its socket.
func startAgent(b *testing.B, srv *redistest.Server, mode v1.IPCMode) string {
	sock := filepath.Join(b.TempDir(), string(mode)+".sock")
	cfg := agent.Config{
		RedisURL: "unix://" + srv.Socket(), RedisPrefix: "bench-" + string(mode) + ":", Node: "bench", Socket: sock,
		Backend: string(mode), GCInterval: time.Second, ReplyTTL: time.Minute, ZeroFill: true, Queue: true,
		RedisBlockingIO: true, RegistryWriteBehind: true, OpTimeout: 10 * time.Second, HeartbeatTTL: 30 * time.Second,
	}
	a, err := agent.New(cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := client.Dial(context.Background(), sock)
		if err == nil {
			_, err = c.List(context.Background())
			c.Close()
			if err == nil {
				return sock
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent (%s) did not answer: %v", mode, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
