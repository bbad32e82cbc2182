// Package blockingnet does socket I/O with plain system calls that block the
// calling OS thread in poll(2), instead of parking the goroutine in Go's
// network poller. A request/response peer waits on every round trip, and
// waking a thread blocked in the kernel skips the poller's wakeup and
// goroutine hand-off, which docs/benchmarks.md shows costing a good part of
// each Redis round trip. The cost is an OS thread per blocked caller.
package blockingnet

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Wait blocks until fd is ready for events (unix.POLLIN, unix.POLLOUT) or
// the deadline passes (os.ErrDeadlineExceeded); a zero deadline never does.
func Wait(fd int, events int16, deadline time.Time) error {
	for {
		timeout := -1
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			timeout = int((left + time.Millisecond - 1) / time.Millisecond)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, timeout)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case fds[0].Revents&unix.POLLNVAL != 0:
			return net.ErrClosed
		case n == 0:
			continue // timed out: the deadline check above decides
		}
		return nil
	}
}

// Conn is a net.Conn whose Read and Write block the calling thread. It wraps
// a connection of the net package (which keeps Close, addresses and
// SyscallConn) and implements deadlines itself.
type Conn struct {
	net.Conn
	fd      int
	closed  atomic.Bool
	closeMu sync.Mutex   // orders Shutdown before Close: never a shutdown of a closed descriptor's number
	rd, wd  atomic.Int64 // deadlines, UnixNano; 0 for none
	// detached: fd is this Conn's own blocking descriptor (Detach); the
	// net.Conn is closed and only answers for the addresses.
	detached bool
}

// Wrap takes over c's I/O. c must be a *net.UnixConn or *net.TCPConn (or
// anything that exposes its descriptor through syscall.Conn).
func Wrap(c net.Conn) (*Conn, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, errors.New("blockingnet: connection has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	bc := &Conn{Conn: c, fd: -1}
	// The descriptor stays valid until c is closed, which only Close does.
	if err := rc.Control(func(fd uintptr) { bc.fd = int(fd) }); err != nil {
		return nil, err
	}
	return bc, nil
}

// Detach takes c out of the net package for a connection without
// deadlines: its descriptor is duplicated, c closed (which takes it out of
// Go's network poller, so its traffic wakes nothing there), and the
// duplicate put in blocking mode. A read that has to wait is then one
// system call, not three (read, poll, read), and each system call counts on
// a round trip of microseconds (docs/benchmarks.md). Setting a
// deadline on the result is an error; Shutdown and Close work as for Wrap.
func Detach(c *net.UnixConn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(orig uintptr) { fd, dupErr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, fmt.Errorf("blockingnet: duplicate the descriptor: %w", dupErr)
	}
	c.Close()
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("blockingnet: blocking mode: %w", err)
	}
	return &Conn{Conn: c, fd: fd, detached: true}, nil
}

// SyscallConn exposes the wrapped connection's descriptor (go-redis checks
// pooled connections through it). A detached Conn has none in the net
// package: FD is its descriptor.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if c.detached {
		return nil, errors.New("blockingnet: a detached connection's descriptor is FD, not the net package's")
	}
	return c.Conn.(syscall.Conn).SyscallConn()
}

// FD is the connection's descriptor, valid until Close.
func (c *Conn) FD() int { return c.fd }

func deadline(v *atomic.Int64) time.Time {
	if ns := v.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

func (c *Conn) opErr(op string, err error) error {
	if c.closed.Load() {
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Read implements io.Reader.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.closed.Load() {
			return 0, c.opErr("read", net.ErrClosed)
		}
		n, err := unix.Read(c.fd, p)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if err := Wait(c.fd, unix.POLLIN, deadline(&c.rd)); err != nil {
				return 0, c.opErr("read", err)
			}
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, c.opErr("read", err)
		case n == 0 && len(p) > 0:
			if c.closed.Load() {
				return 0, c.opErr("read", net.ErrClosed)
			}
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write implements io.Writer: all of p, or an error.
func (c *Conn) Write(p []byte) (int, error) {
	return c.WriteMsg(p, nil)
}

// WriteMsg writes b with oob (such as descriptors, unix.UnixRights) on its
// first byte.
func (c *Conn) WriteMsg(b, oob []byte) (int, error) {
	return c.writeMsg(b, oob, 0, deadline(&c.wd))
}

// WriteMsgWithin is WriteMsg that gives up once d has passed (with
// os.ErrDeadlineExceeded) instead of blocking its thread for as long as
// the peer reads nothing; it works on a detached Conn too.
func (c *Conn) WriteMsgWithin(b, oob []byte, d time.Duration) (int, error) {
	return c.writeMsg(b, oob, unix.MSG_DONTWAIT, time.Now().Add(d))
}

func (c *Conn) writeMsg(b, oob []byte, flags int, dl time.Time) (int, error) {
	done := 0
	for len(b) > 0 {
		if c.closed.Load() {
			return done, c.opErr("write", net.ErrClosed)
		}
		n, err := unix.SendmsgN(c.fd, b, oob, nil, unix.MSG_NOSIGNAL|flags)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if err := Wait(c.fd, unix.POLLOUT, dl); err != nil {
				return done, c.opErr("write", err)
			}
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return done, c.opErr("write", err)
		}
		b, oob, done = b[n:], nil, done+n
	}
	return done, nil
}

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// ErrDetachedDeadline is the error of a deadline set on a detached Conn.
var ErrDetachedDeadline = errors.New("blockingnet: a detached connection has no deadlines")

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.detached && !t.IsZero() {
		return ErrDetachedDeadline
	}
	c.rd.Store(unixNano(t))
	return nil
}

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.detached && !t.IsZero() {
		return ErrDetachedDeadline
	}
	c.wd.Store(unixNano(t))
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Shutdown wakes every thread blocked on the connection (their calls fail)
// without releasing the descriptor, which they may still be using. After
// Close it does nothing: the descriptor's number may belong to another
// file by then.
func (c *Conn) Shutdown() {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if !c.closed.Load() {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

// ShutdownRead ends the connection's reading side: a blocked or later read
// sees the end of the stream, while writes still go out.
func (c *Conn) ShutdownRead() {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if !c.closed.Load() {
		unix.Shutdown(c.fd, unix.SHUT_RD)
	}
}

// Close wakes blocked callers, then closes the connection.
func (c *Conn) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed.Load() {
		return net.ErrClosed
	}
	c.closed.Store(true) // first: a woken reader reports net.ErrClosed, not EOF
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	if c.detached {
		return unix.Close(c.fd)
	}
	return c.Conn.Close()
}
