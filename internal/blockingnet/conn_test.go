package blockingnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/memcuda/memcuda/internal/redistest"
)

// pair returns a Conn and the plain peer of a Unix stream connection.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	c, err := Dialer(time.Second, nil)(context.Background(), "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	peer := <-acc
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c.(*Conn), peer
}

// writeBig writes more than the socket buffers hold (Write must wait for
// room) and checks that the peer reads the same bytes.
func writeBig(t *testing.T, c *Conn, peer io.Reader) {
	t.Helper()
	big := make([]byte, 4<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := c.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if b := <-got; string(b) != string(big) {
		t.Fatal("peer read other bytes than were written")
	}
}

func TestReadWrite(t *testing.T) {
	c, peer := pair(t)
	writeBig(t, c, peer)
	go peer.Write([]byte("pong"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("Read = %q, %v", buf, err)
	}
	peer.Close()
	if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("Read after the peer closed: %v, want EOF", err)
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Fatalf("timed out after %v, want ~50ms", d)
	}
	c.SetReadDeadline(time.Time{})
	c.SetDeadline(time.Now().Add(-time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read with a past deadline: %v", err)
	}
}

// blockRead starts a Read on c that blocks (nothing comes), and returns a
// function that waits up to 5 s for that Read to end once waker woke it,
// and gives its error.
func blockRead(t *testing.T, c *Conn) func(waker string) error {
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // time to block
	return func(waker string) error {
		t.Helper()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not wake a blocked Read", waker)
			return nil
		}
	}
}

func TestCloseWakesBlockedRead(t *testing.T) {
	c, _ := pair(t)
	woken := blockRead(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := woken("Close"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read ended with %v, want net.ErrClosed", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

// The agent's Redis client: scripts, a blocking command that times out,
// a server restart, and a closed client unblocking a waiter.
func TestGoRedisOverBlockingConns(t *testing.T) {
	srv := redistest.Start(t)
	opt := &redis.Options{Addr: srv.Addr(), MaxRetries: -1, ReadTimeout: time.Second}
	opt.Dialer = Dialer(time.Second, nil)
	rdb := redis.NewClient(opt)
	ctx := context.Background()
	script := redis.NewScript(`redis.call('HINCRBY', KEYS[1], 'n', 1) return redis.call('HGET', KEYS[1], 'n')`)
	for i := 1; i <= 100; i++ {
		n, err := script.Run(ctx, rdb, []string{"h"}).Int()
		if err != nil || n != i {
			t.Fatalf("script run %d = %d, %v", i, n, err)
		}
	}
	start := time.Now()
	if err := rdb.BLMove(ctx, "empty", "dst", "LEFT", "RIGHT", 200*time.Millisecond).Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("BLMOVE on an empty list: %v, want redis.Nil", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("BLMOVE returned after %v, before its timeout", d)
	}
	srv.Restart()
	var err error
	for i := 0; i < 3; i++ { // the pooled connection is dead: the first call may fail
		if err = rdb.Ping(ctx).Err(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("no Redis after its restart: %v", err)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- rdb.BLMove(ctx, "empty", "dst", "LEFT", "RIGHT", 0).Err() }()
	time.Sleep(50 * time.Millisecond)
	rdb.Close()
	select {
	case err := <-waiting:
		if err == nil {
			t.Fatal("a blocked BLMOVE returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the client did not wake a blocked BLMOVE")
	}
}

// detachedPair returns a detached Conn (the server side, as the agent
// uses it) and the plain client of a Unix stream connection.
func detachedPair(t *testing.T) (*Conn, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	acc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Detach(acc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

func TestDetachedReadWriteAndDescriptors(t *testing.T) {
	c, peer := detachedPair(t)
	if fl, err := unix.FcntlInt(uintptr(c.FD()), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Fatalf("detached descriptor flags %#x, %v: want blocking", fl, err)
	}
	if c.LocalAddr() == nil || c.LocalAddr().Network() != "unix" {
		t.Fatalf("LocalAddr = %v", c.LocalAddr())
	}
	if _, err := c.SyscallConn(); err == nil {
		t.Fatal("SyscallConn of a detached Conn handed out the closed original")
	}
	writeBig(t, c, peer)
	// A descriptor rides on the first byte of a message, as the agent sends segments.
	f, err := os.CreateTemp(t.TempDir(), "seg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := c.WriteMsg([]byte("seg"), unix.UnixRights(int(f.Fd()))); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 3), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := peer.ReadMsgUnix(buf, oob)
	if err != nil || string(buf[:n]) != "seg" {
		t.Fatalf("ReadMsgUnix = %q, %v", buf[:n], err)
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	if len(msgs) != 1 {
		t.Fatalf("%d control messages, want 1", len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("descriptors %v, %v", fds, err)
	}
	unix.Close(fds[0])
	go peer.Write([]byte("pong"))
	if _, err := io.ReadFull(c, buf[:3]); err != nil || string(buf) != "pon" {
		t.Fatalf("Read = %q, %v", buf, err)
	}
	peer.Close()
	c.Read(buf[:1]) // the "g"
	if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("Read after the peer closed: %v, want EOF", err)
	}
}

func TestDetachedShutdownAndCloseWakeABlockedRead(t *testing.T) {
	for _, how := range []string{"shutdown", "close"} {
		t.Run(how, func(t *testing.T) {
			c, _ := detachedPair(t)
			woken := blockRead(t, c)
			if how == "shutdown" {
				c.Shutdown()
			} else if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if err := woken(how); err == nil {
				t.Fatal("a woken Read returned no error")
			}
		})
	}
}

func TestDetachedRefusesDeadlines(t *testing.T) {
	c, _ := detachedPair(t)
	if err := c.SetReadDeadline(time.Now().Add(time.Second)); !errors.Is(err, ErrDetachedDeadline) {
		t.Fatalf("SetReadDeadline: %v", err)
	}
	if err := c.SetDeadline(time.Now().Add(time.Second)); !errors.Is(err, ErrDetachedDeadline) {
		t.Fatalf("SetDeadline: %v", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("clearing deadlines: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

func TestReadMsgNowDoesNotWait(t *testing.T) {
	c, peer := detachedPair(t)
	if err := c.SetReadTimeout(time.Minute); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 8), make([]byte, unix.CmsgSpace(4))
	start := time.Now()
	if _, _, err := c.ReadMsgNow(buf, oob); !errors.Is(err, ErrIdle) {
		t.Fatalf("ReadMsgNow with nothing sent: %v, want ErrIdle", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("ReadMsgNow waited %v", d)
	}
	f, err := os.CreateTemp(t.TempDir(), "seg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, _, err := peer.WriteMsgUnix([]byte("frame"), unix.UnixRights(int(f.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	n, oobn, err := c.ReadMsgNow(buf, oob)
	for errors.Is(err, ErrIdle) {
		n, oobn, err = c.ReadMsgNow(buf, oob)
	}
	if err != nil || string(buf[:n]) != "frame" || oobn == 0 {
		t.Fatalf("ReadMsgNow = %q, %d bytes of ancillary data, %v", buf[:n], oobn, err)
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("descriptors %v, %v", fds, err)
	}
	if fl, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Fatalf("a received descriptor's flags %#x, %v: want close-on-exec", fl, err)
	}
	unix.Close(fds[0])
	peer.Close()
	if _, _, err := c.ReadMsgNow(buf, oob); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadMsgNow after the peer closed: %v, want EOF", err)
	}
	c.Close()
	if _, _, err := c.ReadMsgNow(buf, oob); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadMsgNow after Close: %v, want ErrClosed", err)
	}
}
