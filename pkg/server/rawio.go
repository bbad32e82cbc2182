package server

import (
	"errors"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// rawConn does the connection's I/O with plain system calls, blocking in
// poll(2) on the serving goroutine's locked OS thread instead of parking in
// Go's network poller. A request/response protocol with one client per
// connection waits on every round trip, and waking a thread blocked in the
// kernel is several times faster than waking a parked goroutine (measured
// in docs/benchmarks.md). The cost is one OS thread per connection.
type rawConn struct {
	fd int
}

func newRawConn(c *net.UnixConn) (*rawConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &rawConn{fd: -1}
	// The fd stays valid until c is closed, which only the owner does.
	if err := rc.Control(func(fd uintptr) { r.fd = int(fd) }); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rawConn) wait(events int16) error {
	for {
		fds := []unix.PollFd{{Fd: int32(r.fd), Events: events}}
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if fds[0].Revents&unix.POLLNVAL != 0 {
			return net.ErrClosed
		}
		return nil
	}
}

// Read implements io.Reader.
func (r *rawConn) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(r.fd, p)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if err := r.wait(unix.POLLIN); err != nil {
				return 0, err
			}
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, err
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// writeMsg writes b with oob (descriptors) on its first byte.
func (r *rawConn) writeMsg(b, oob []byte) error {
	for len(b) > 0 {
		n, err := unix.SendmsgN(r.fd, b, oob, nil, unix.MSG_NOSIGNAL)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if err := r.wait(unix.POLLOUT); err != nil {
				return err
			}
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		}
		b, oob = b[n:], nil
	}
	return nil
}

// shutdown wakes a thread blocked in poll on this connection.
func (r *rawConn) shutdown() { unix.Shutdown(r.fd, unix.SHUT_RDWR) }
