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

	"github.com/memcuda/memcuda/internal/peakmap"
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
	return c.readMsgOnce(p, oob, unix.MSG_CMSG_CLOEXEC)
}

// ReadMsgNow is ReadMsgOnce that does not wait: ErrIdle when nothing has
// arrived.
func (c *Conn) ReadMsgNow(p, oob []byte) (n, oobn int, err error) {
	return c.readMsgOnce(p, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
}

func (c *Conn) readMsgOnce(p, oob []byte, flags int) (n, oobn int, err error) {
	for {
		if c.closed.Load() {
			return 0, 0, c.opErr("read", os.ErrClosed)
		}
		n, oobn, err := recvmsg(c.fd, p, oob, flags)
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

// Parker watches many idle connections on one thread (epoll), so that a
// connection with nothing to read holds no thread and no goroutine: a
// callback runs once it is readable, closed, or a deadline passes.
type Parker struct {
	epfd int
	wake int // an eventfd in the set: Close wakes the waiting thread with it

	mu      sync.Mutex
	waiting peakmap.Map[int32, *watch] // descriptor -> its watch
	// starting holds a token for each callback started and not yet run.
	starting chan struct{}
	closed   bool
}

// watch is one Watch: the first of readiness and its deadline runs fn.
type watch struct {
	fn    func(error)
	timer *time.Timer
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
	p := &Parker{epfd: epfd, wake: wake, starting: make(chan struct{}, maxStarting)}
	go p.run()
	return p, nil
}

// maxStarting bounds the callbacks started and not yet run.
const maxStarting = 64

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
		for _, ev := range events[:n] {
			if int(ev.Fd) == p.wake {
				unix.Close(p.epfd)
				unix.Close(p.wake)
				return
			}
			if w := p.take(ev.Fd, nil); w != nil {
				if w.timer != nil {
					w.timer.Stop()
				}
				// At most maxStarting callbacks wait to be run: a crowd
				// that closes at once would otherwise start a goroutine
				// for each of thousands of connections before the first
				// runs, and the runtime keeps every goroutine it made.
				p.starting <- struct{}{}
				go func() {
					<-p.starting
					w.fn(nil)
				}()
			}
		}
	}
}

// ErrParkerClosed is the error of a Watch on a closed Parker.
var ErrParkerClosed = errors.New("blockingnet: parker closed")

// Watch runs fn, on a goroutine of its own, once c is readable (data, end
// of stream, an error or a shutdown) with nil, or once deadline passes
// with os.ErrDeadlineExceeded (a zero deadline never does). Until then c
// costs no thread and no goroutine. One watch per connection at a time.
func (p *Parker) Watch(c *Conn, deadline time.Time, fn func(error)) error {
	fd := int32(c.fd)
	w := &watch{fn: fn}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrParkerClosed
	}
	p.waiting.Set(fd, w)
	if !deadline.IsZero() {
		w.timer = time.AfterFunc(time.Until(deadline), func() {
			if p.take(fd, w) != nil {
				fn(os.ErrDeadlineExceeded)
			}
		})
	}
	// Under the lock: neither the timer nor readiness can take the watch
	// before the descriptor is in the set.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		p.waiting.Delete(fd)
		if w.timer != nil {
			w.timer.Stop()
		}
		return fmt.Errorf("blockingnet: epoll add: %w", err)
	}
	return nil
}

// take ends fd's watch (only if it is want, when want is set) and returns
// it; nil when another path took it first. The descriptor leaves the set
// before its callback runs: its number may be reused once the connection
// is closed.
func (p *Parker) take(fd int32, want *watch) *watch {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, _ := p.waiting.Get(fd)
	if w == nil || (want != nil && w != want) {
		return nil
	}
	p.waiting.Delete(fd)
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	return w
}

// Close stops the parker and its thread; watches still armed never fire
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
