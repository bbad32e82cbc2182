package server

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/blockingnet"
)

// How a connection waits for its next request. A connection that just
// answered waits in a blocking read on its own thread for up to hotWait (a
// client's next request usually follows within microseconds, and a thread
// blocked in read wakes fastest). Past that, or when the hot slots are all
// taken, it parks: the server's Parker (one epoll thread for every idle
// connection) watches it and its goroutine ends; a new one carries on when
// it is readable. Ten thousand idle connections cost no thread and no
// goroutine each (the runtime never frees a goroutine it once made).
const hotWait = 50 * time.Millisecond

// Read buffers: a connection that is reading holds one, an idle one gives
// it back to its pool. A connection starts with a small one (a request
// frame is usually a few hundred bytes, and a slow sender's partial frame
// is held for as long as it takes) and moves to a large one for a frame
// that does not fit, or once a read filled the small one (frames pipelined
// back to back).
const (
	smallBufSize = 4 << 10
	bufSize      = 64 << 10
)

var (
	smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	bufPool      = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}
)

// errReadTimeout is a frame that did not arrive whole within the read timeout.
var errReadTimeout = errors.New("a request frame did not arrive whole in time")

// errHandoff asks the goroutine that holds a thread to let another one
// wait for the idle connection (see conn.serve).
var errHandoff = errors.New("idle: continue parked on another goroutine")

// errParked ends the serving goroutine of a connection the Parker now
// watches: resume carries on when it wakes.
var errParked = errors.New("idle: parked")

// errIdleTimeout is a connection idle past the idle timeout.
var errIdleTimeout = errors.New("the connection was idle too long")

// frameReader reads request frames off a detached connection.
type frameReader struct {
	raw    *blockingnet.Conn
	srv    *Server
	buf    *[]byte // nil while idle
	r, w   int     // unread bytes are (*buf)[r:w]
	locked bool    // the goroutine holds its thread (runtime.LockOSThread)
	// parkNext: the next wait is parked, not hot (a new connection, or one
	// that just went idle on a thread).
	parkNext bool
	// started is when the first byte of the frame being read arrived.
	started time.Time
	// idleFor reports whether the connection may be closed for idling (it
	// holds no references).
	idleFor func() bool
	// fds are descriptors that arrived and no frame has taken yet.
	fds []int
	oob []byte
	// resume serves the connection again once the Parker woke it (with
	// its error, nil when readable).
	resume func(error)
	// woke is set while a goroutine carries on after a park: the Parker's
	// outcome is the first thing it reads.
	woke        bool
	wokeErr     error
	parkPartial bool // the park waited for the rest of a frame
}

// oobSize holds the descriptors of one frame.
var oobSize = unix.CmsgSpace(4 * v1.MaxFDs)

// read is one read into the buffer that keeps any descriptors that came
// with the bytes; with now, one that does not wait (ErrIdle: nothing came).
func (f *frameReader) read(p []byte, now bool) (int, error) {
	if f.oob == nil {
		f.oob = make([]byte, oobSize)
	}
	var n, oobn int
	var err error
	if now {
		n, oobn, err = f.raw.ReadMsgNow(p, f.oob)
	} else {
		n, oobn, err = f.raw.ReadMsgOnce(p, f.oob)
	}
	if err == nil && oobn > 0 {
		f.keepFDs(f.oob[:oobn])
	}
	return n, err
}

// spinRead polls for what arrives for up to the server's hot spin, when a
// polling slot is free (WithHotSpin); ErrIdle when nothing came.
func (f *frameReader) spinRead(p []byte) (int, error) {
	s := f.srv
	if s.hotSpin <= 0 || cap(s.spinning) == 0 {
		return 0, blockingnet.ErrIdle
	}
	if !s.spinOn.Load() {
		s.spinSkipped.Add(1)
		return 0, blockingnet.ErrIdle
	}
	if !s.spinning.acquire() {
		return 0, blockingnet.ErrIdle
	}
	defer s.spinning.release()
	until := time.Now().Add(s.hotSpin)
	for {
		n, err := f.read(p, true)
		if !errors.Is(err, blockingnet.ErrIdle) {
			if err == nil {
				s.spinCaught.Add(1) // the end of the stream is not a request
			}
			return n, err
		}
		// The gate closing (WithHotSpinGate) ends a spin too: a busy node
		// gets its CPU back now, not after the spin.
		if !time.Now().Before(until) || !s.spinOn.Load() {
			s.spinMissed.Add(1)
			return n, err
		}
	}
}

func (f *frameReader) keepFDs(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		if fds, err := unix.ParseUnixRights(&m); err == nil {
			f.fds = append(f.fds, fds...)
		}
	}
}

// takeFDs hands the caller the first n descriptors that arrived; false
// when fewer came.
func (f *frameReader) takeFDs(n int) ([]int, bool) {
	if len(f.fds) < n {
		return nil, false
	}
	out := append([]int(nil), f.fds[:n]...)
	f.fds = f.fds[n:]
	return out, true
}

// closeFDs closes the descriptors no frame took.
func (f *frameReader) closeFDs() {
	for _, fd := range f.fds {
		unix.Close(fd)
	}
	f.fds = nil
}

// next returns the next frame's header and body (the body aliases the
// buffer until the following call).
func (f *frameReader) next() (v1.Header, []byte, error) {
	for {
		if f.buf != nil {
			if h, body, ok, err := f.parse(); err != nil || ok {
				return h, body, err
			}
		}
		if err := f.fill(); err != nil {
			return v1.Header{}, nil, err
		}
	}
}

// parse takes a whole frame from the buffer, if it holds one.
func (f *frameReader) parse() (v1.Header, []byte, bool, error) {
	b := (*f.buf)[f.r:f.w]
	if len(b) < v1.HeaderSize {
		return v1.Header{}, nil, false, nil
	}
	h, err := v1.ParseHeader(b)
	if err != nil {
		return h, nil, false, err
	}
	end := v1.HeaderSize + h.BodyLen
	if len(b) < end {
		return h, nil, false, nil
	}
	f.r += end
	f.started = time.Time{}
	if f.r < f.w {
		// The next frame began in the same read: its time runs from now.
		f.started = time.Now()
	}
	return h, b[v1.HeaderSize:end], true, nil
}

// fill reads more bytes: in a blocking read while the connection is hot,
// parked otherwise.
func (f *frameReader) fill() error {
	if f.buf == nil {
		f.buf = smallBufPool.Get().(*[]byte)
		f.r, f.w = 0, 0
	}
	buf := *f.buf
	if f.r == f.w {
		f.r, f.w = 0, 0
	}
	if need := f.need(); need > len(buf) || (f.w == len(buf) && len(buf) == smallBufSize) {
		// A frame larger than the buffer, or a small buffer filled: a
		// large one (of its own past the pool's size).
		var nb *[]byte
		if need <= bufSize && len(buf) < bufSize {
			nb = bufPool.Get().(*[]byte)
		} else {
			b := make([]byte, max(need, 2*len(buf)))
			nb = &b
		}
		f.w = copy(*nb, buf[f.r:f.w])
		f.r = 0
		f.putBuf()
		f.buf, buf = nb, *nb
	} else if need > len(buf)-f.r || f.w == len(buf) {
		f.w = copy(buf, buf[f.r:f.w])
		f.r = 0
	}
	if f.woke {
		f.woke = false
		return f.afterPark(f.wokeErr)
	}
	if f.parkNext {
		f.parkNext = false
		return f.park()
	}
	// Only a connection between requests waits hot: the rest of a frame
	// that came in part (large, or a client dripping bytes) is waited for
	// parked, so a slow sender never holds a thread.
	if f.r == f.w && f.hot() {
		n, err := f.spinRead(buf[f.w:])
		if errors.Is(err, blockingnet.ErrIdle) {
			n, err = f.read(buf[f.w:], false)
		}
		f.srv.hot.release()
		if err == nil {
			f.arrived(n)
			return nil
		}
		if !errors.Is(err, blockingnet.ErrIdle) {
			return err
		}
	}
	return f.park()
}

// need is how many bytes the frame being read needs, as far as known.
func (f *frameReader) need() int {
	b := (*f.buf)[f.r:f.w]
	if len(b) < v1.HeaderSize {
		return v1.HeaderSize
	}
	h, err := v1.ParseHeader(b)
	if err != nil {
		return v1.HeaderSize
	}
	return v1.HeaderSize + h.BodyLen
}

func (f *frameReader) arrived(n int) {
	if f.started.IsZero() && n > 0 {
		f.started = time.Now()
	}
	f.w += n
}

// hot takes a hot slot for a blocking read, and this goroutine's thread.
func (f *frameReader) hot() bool {
	if !f.srv.hot.acquire() {
		return false
	}
	if !f.locked {
		runtime.LockOSThread()
		f.locked = true
	}
	return true
}

// park has the Parker watch the connection until it is readable (or its
// deadline passes) and ends this goroutine (errParked); afterPark carries
// on. An empty buffer goes back to the pool meanwhile.
func (f *frameReader) park() error {
	if f.locked {
		f.locked = false // the next goroutine starts without a thread of its own, parked
		f.parkNext = true
		if f.r == f.w {
			f.release()
		}
		return errHandoff
	}
	deadline := time.Time{}
	f.parkPartial = f.r < f.w
	if f.parkPartial && f.srv.readTimeout > 0 {
		deadline = f.started.Add(f.srv.readTimeout)
	} else if !f.parkPartial {
		f.release()
		if f.srv.idleTimeout > 0 && f.idleFor() {
			deadline = time.Now().Add(f.srv.idleTimeout)
		}
	}
	return f.watch(deadline)
}

func (f *frameReader) watch(deadline time.Time) error {
	if err := f.srv.parker.Watch(f.raw, deadline, f.resume); err != nil {
		return err
	}
	return errParked
}

// afterPark is the first step of the goroutine the Parker woke: the read
// of what arrived (one that cannot block), or the deadline's verdict.
func (f *frameReader) afterPark(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if f.parkPartial {
			return fmt.Errorf("%w (%s)", errReadTimeout, f.srv.readTimeout)
		}
		if f.idleFor() {
			return fmt.Errorf("%w (%s)", errIdleTimeout, f.srv.idleTimeout)
		}
		return f.watch(time.Now().Add(f.srv.idleTimeout)) // it holds references: not idle
	}
	if err != nil {
		return err
	}
	n, err := f.read((*f.buf)[f.w:], false) // fill gave the buffer
	if errors.Is(err, blockingnet.ErrIdle) {
		return nil // woken with nothing to read after all: wait again
	}
	if err != nil {
		return err
	}
	f.arrived(n)
	return nil
}

// release gives the buffer back to the pool when it holds nothing unread.
func (f *frameReader) release() {
	if f.buf == nil || f.r < f.w {
		return
	}
	f.putBuf()
}

// putBuf gives the buffer to its pool (one of its own is dropped).
func (f *frameReader) putBuf() {
	switch len(*f.buf) {
	case smallBufSize:
		smallBufPool.Put(f.buf)
	case bufSize:
		bufPool.Put(f.buf)
	}
	f.buf = nil
}

// hotSlots bounds the connections waiting in a blocking read at once: each
// holds a thread.
type hotSlots chan struct{}

func (h hotSlots) acquire() bool {
	select {
	case h <- struct{}{}:
		return true
	default:
		return false
	}
}

func (h hotSlots) release() { <-h }
