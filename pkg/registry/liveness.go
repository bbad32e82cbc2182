package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Liveness says, without a round trip, whether Redis is still there. It
// keeps one idle connection open and peeks at it: a server that exits or
// restarts closes it, so the next peek sees the end of the stream. The store
// answers some requests before their Redis script has run only while Up is
// true, so a Redis that is known down gets a clear error instead.
type Liveness struct {
	dial func(context.Context) (net.Conn, error)

	cur     atomic.Pointer[watchConn]
	epoch   time.Time
	seenUp  atomic.Int64 // time since epoch of the last peek that found the connection open
	mu      sync.Mutex
	dialing bool
	closed  bool
}

type watchConn struct {
	conn net.Conn
	raw  syscall.RawConn
}

// NewLiveness starts watching the connections dial opens. It dials in the
// background: Up is false until the first connection stands.
func NewLiveness(dial func(context.Context) (net.Conn, error)) *Liveness {
	l := &Liveness{dial: dial, epoch: time.Now().Add(-time.Hour)} // seenUp 0: long ago
	l.redial()
	return l
}

// peekEvery is how long a peek that found the connection open stands for
// the next ones: busy agents ask on every written-behind request, and a
// peek is a system call. A Redis that goes away in that time is no
// different from one that goes away right after the peek: the writes
// already answered are retried until it is back.
const peekEvery = 100 * time.Microsecond

// Up reports whether the watched connection is open and the server has not
// closed it (as seen at most peekEvery ago).
func (l *Liveness) Up() bool {
	w := l.cur.Load()
	if w == nil {
		l.redial()
		return false
	}
	now := int64(time.Since(l.epoch))
	if now-l.seenUp.Load() < int64(peekEvery) {
		return true
	}
	if peekOpen(w.raw) {
		l.seenUp.Store(now)
		return true
	}
	l.seenUp.Store(0)
	if l.cur.CompareAndSwap(w, nil) {
		w.conn.Close()
	}
	l.redial()
	return false
}

// Close stops watching.
func (l *Liveness) Close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if w := l.cur.Swap(nil); w != nil {
		w.conn.Close()
	}
}

// redial opens a new connection in the background unless one is on its way.
func (l *Liveness) redial() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dialing || l.closed {
		return
	}
	l.dialing = true
	go func() {
		wait := 20 * time.Millisecond
		for {
			w, err := l.open()
			l.mu.Lock()
			if l.closed {
				l.dialing = false
				l.mu.Unlock()
				if w != nil {
					w.conn.Close()
				}
				return
			}
			if err == nil {
				l.cur.Store(w)
				l.dialing = false
				l.mu.Unlock()
				return
			}
			l.mu.Unlock()
			time.Sleep(wait)
			wait = min(wait*2, time.Second)
		}
	}()
}

func (l *Liveness) open() (*watchConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := l.dial(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := rawConnOf(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &watchConn{conn: c, raw: raw}, nil
}

func rawConnOf(c net.Conn) (syscall.RawConn, error) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, errors.New("liveness: connection has no descriptor")
	}
	return sc.SyscallConn()
}

// peekOpen looks at the socket without reading from it or blocking: the end
// of the stream or an error means the server is gone. Unread bytes (a TLS
// session ticket) say nothing either way; the connection counts as open.
func peekOpen(raw syscall.RawConn) bool {
	open := false
	err := raw.Control(func(fd uintptr) {
		var b [1]byte
		for {
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				open = true
			case err != nil:
				open = false
			default:
				open = n > 0
			}
			return
		}
	})
	return err == nil && open
}
