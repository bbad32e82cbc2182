package blockingnet

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrIdle is a ReadOnce that found no data within the read timeout
// (SetReadTimeout): the connection is idle.
var ErrIdle = errors.New("blockingnet: no data within the read timeout")

// SetReadTimeout bounds how long one blocking read of a detached Conn waits
// (SO_RCVTIMEO); 0 waits for ever.
func (c *Conn) SetReadTimeout(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	return unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

// ReadOnce is one blocking read: what arrives, io.EOF at the end of the
// stream, or ErrIdle when the read timeout passed without data.
func (c *Conn) ReadOnce(p []byte) (int, error) {
	for {
		if c.closed.Load() {
			return 0, c.opErr("read", os.ErrClosed)
		}
		n, err := unix.Read(c.fd, p)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, ErrIdle
		case err != nil:
			return 0, c.opErr("read", err)
		case n == 0 && len(p) > 0:
			return 0, eofOrClosed(c)
		}
		return n, nil
	}
}

// ReadMsgOnce is ReadOnce that also receives ancillary data (descriptors
// passed with SCM_RIGHTS arrive close-on-exec) into oob.
func (c *Conn) ReadMsgOnce(p, oob []byte) (n, oobn int, err error) {
	for {
		if c.closed.Load() {
			return 0, 0, c.opErr("read", os.ErrClosed)
		}
		n, oobn, err := recvmsg(c.fd, p, oob, unix.MSG_CMSG_CLOEXEC)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, 0, ErrIdle
		case err != nil:
			return 0, 0, c.opErr("read", err)
		case n == 0 && oobn == 0 && len(p) > 0:
			return 0, 0, eofOrClosed(c)
		}
		return n, oobn, nil
	}
}

// recvmsg is recvmsg(2) without a source address: unix.Recvmsg allocates
// one (and its message header) on every call, and a connection's reads
// are the agent's hottest path.
func recvmsg(fd int, p, oob []byte, flags int) (n, oobn int, err error) {
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	msg := unix.Msghdr{Iov: &iov}
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if e != 0 {
		return 0, 0, e
	}
	return int(r), int(msg.Controllen), nil
}

func eofOrClosed(c *Conn) error {
	if c.closed.Load() {
		return c.opErr("read", os.ErrClosed)
	}
	return io.EOF
}

// Parker waits for many idle connections on one thread (epoll), so that a
// connection with nothing to read holds no thread: its goroutine parks until
// the connection is readable, closed, or a deadline passes.
type Parker struct {
	epfd int
	wake int // an eventfd in the set: Close wakes the waiting thread with it

	mu      sync.Mutex
	waiting map[int32]chan struct{} // descriptor -> its waiter, closed when it is readable
	closed  bool
}

// NewParker starts a parker and the thread that waits for it.
func NewParker() (*Parker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("blockingnet: epoll: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)})
	}
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("blockingnet: eventfd: %w", err)
	}
	p := &Parker{epfd: epfd, wake: wake, waiting: map[int32]chan struct{}{}}
	go p.run()
	return p, nil
}

func (p *Parker) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if int(ev.Fd) == p.wake {
				p.mu.Unlock()
				unix.Close(p.epfd)
				unix.Close(p.wake)
				return
			}
			if ch, ok := p.waiting[ev.Fd]; ok {
				delete(p.waiting, ev.Fd)
				close(ch)
			}
		}
		p.mu.Unlock()
	}
}

// ErrParkerClosed is the error of a Wait on a closed Parker.
var ErrParkerClosed = errors.New("blockingnet: parker closed")

// Wait returns once c is readable (data, end of stream, an error or a
// shutdown), or with os.ErrDeadlineExceeded once deadline passes (a zero
// deadline never does). The calling goroutine holds no thread meanwhile.
func (p *Parker) Wait(c *Conn, deadline time.Time) error {
	fd := int32(c.fd)
	ch := make(chan struct{})
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrParkerClosed
	}
	p.waiting[fd] = ch
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		p.forget(fd, ch)
		return fmt.Errorf("blockingnet: epoll add: %w", err)
	}
	// The descriptor leaves the set before Wait returns: its number may be
	// reused by another connection once the caller closes it.
	defer unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
		return nil
	case <-timeout:
		p.forget(fd, ch)
		return os.ErrDeadlineExceeded
	}
}

func (p *Parker) forget(fd int32, ch chan struct{}) {
	p.mu.Lock()
	if p.waiting[fd] == ch {
		delete(p.waiting, fd)
	}
	p.mu.Unlock()
}

// Close stops the parker and its thread; waiters still parked stay parked
// (shut their connections down to wake them first).
func (p *Parker) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var one = [8]byte{1}
	_, err := unix.Write(p.wake, one[:])
	return err
}
