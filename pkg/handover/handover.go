// Package handover moves a running agent's socket and memory to a new
// instance on the same node without a gap: the new instance asks over a
// Unix socket beside the client socket, and the running one stops serving
// (its in-flight requests finished, its connections closed without dropping
// their references) and passes its listening socket, its lock and its
// segments' descriptors with SCM_RIGHTS. Clients reconnect to the same
// listening socket, whose pending connections the new instance accepts.
package handover

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/memcuda/memcuda/pkg/errdefs"
)

// Path is the hand-over socket of the agent serving clientSocket.
func Path(clientSocket string) string { return clientSocket + ".handover" }

// Request is what the new instance says about itself; the running one hands
// over only to an agent of the same registry prefix and backend.
type Request struct {
	Instance string `json:"instance"`
	PID      int    `json:"pid"`
	Prefix   string `json:"prefix"`
	Mode     string `json:"mode"`
	Software string `json:"software"`
}

// State is what the running instance hands over. The receiver owns the
// files.
type State struct {
	// Instance is the predecessor's instance id.
	Instance string
	// Listener is the client socket, listening.
	Listener *os.File
	// Lock is the host backend's scope lock (nil for the GPU backends).
	Lock *os.File
	// Segments are segment descriptors by segment id (vmm).
	Segments map[string]*os.File
}

// Close closes every file of s.
func (s *State) Close() {
	for _, f := range append([]*os.File{s.Listener, s.Lock}, values(s.Segments)...) {
		if f != nil {
			f.Close()
		}
	}
}

func values(m map[string]*os.File) []*os.File {
	out := make([]*os.File, 0, len(m))
	for _, f := range m {
		out = append(out, f)
	}
	return out
}

// header is the first message of an answer; the descriptors follow in
// chunks, each on one byte.
type header struct {
	Error    string   `json:"error,omitempty"`
	Instance string   `json:"instance,omitempty"`
	Lock     bool     `json:"lock,omitempty"`
	Segments []string `json:"segments,omitempty"`
}

// fdChunk is how many descriptors go on one message (the kernel takes at
// most 253).
const fdChunk = 200

// Giver is the running agent's side: it stops serving and returns what it
// hands over, or refuses.
type Giver interface {
	HandOver(ctx context.Context, req Request) (*State, error)
}

// Listen opens the hand-over socket of the agent serving clientSocket (mode
// 0600: only the agent's own user may take it over).
func Listen(clientSocket string) (*net.UnixListener, error) {
	path := Path(clientSocket)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve answers hand-over requests on l until ctx ends or one succeeds
// (then it returns nil, having passed everything). A refused request is
// answered with the reason, and Serve goes on.
func Serve(ctx context.Context, l *net.UnixListener, g Giver) error {
	go func() { <-ctx.Done(); l.Close() }()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		done, err := serveOne(ctx, c, g)
		c.Close()
		if done {
			l.Close()
			return err
		}
	}
}

func serveOne(ctx context.Context, c *net.UnixConn, g Giver) (done bool, err error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var req Request
	if err := readMessage(c, &req); err != nil {
		return false, nil
	}
	c.SetDeadline(time.Time{})
	st, err := g.HandOver(ctx, req)
	if err != nil {
		writeMessage(c, header{Error: err.Error()}, nil)
		return false, nil
	}
	defer st.Close() // the receiver has its own copies
	h := header{Instance: st.Instance, Lock: st.Lock != nil}
	fds := []int{int(st.Listener.Fd())}
	if st.Lock != nil {
		fds = append(fds, int(st.Lock.Fd()))
	}
	for id, f := range st.Segments {
		h.Segments = append(h.Segments, id)
		fds = append(fds, int(f.Fd()))
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := writeMessage(c, h, nil); err != nil {
		return true, fmt.Errorf("send the hand-over: %w", err)
	}
	for len(fds) > 0 {
		chunk := fds[:min(len(fds), fdChunk)]
		fds = fds[len(chunk):]
		if _, _, err := c.WriteMsgUnix([]byte{'F'}, unix.UnixRights(chunk...), nil); err != nil {
			return true, fmt.Errorf("send the hand-over's descriptors: %w", err)
		}
	}
	// The receiver says when it holds everything: only then may this side
	// let go of the memory.
	var ack struct{ OK bool }
	if err := readMessage(c, &ack); err != nil || !ack.OK {
		return true, fmt.Errorf("%w: the new instance did not confirm the hand-over: %v", errdefs.ErrUnavailable, err)
	}
	return true, nil
}

// Take asks the agent serving clientSocket to hand over. It fails with
// errdefs.ErrNotFound when no agent answers on the hand-over socket.
func Take(ctx context.Context, clientSocket string, req Request) (*State, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", Path(clientSocket))
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: no agent takes hand-over requests at %s: %w", errdefs.ErrNotFound, Path(clientSocket), err)
		}
		return nil, err
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := writeMessage(c, req, nil); err != nil {
		return nil, err
	}
	var h header
	if err := readMessage(c, &h); err != nil {
		return nil, fmt.Errorf("read the hand-over: %w", err)
	}
	if h.Error != "" {
		return nil, fmt.Errorf("%w: the running agent refused the hand-over: %s", errdefs.ErrFailedPrecondition, h.Error)
	}
	want := 1 + len(h.Segments)
	if h.Lock {
		want++
	}
	fds, err := readFDs(c, want)
	if err != nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, err
	}
	st := &State{Instance: h.Instance, Listener: os.NewFile(uintptr(fds[0]), filepath.Base(clientSocket)), Segments: map[string]*os.File{}}
	fds = fds[1:]
	if h.Lock {
		st.Lock = os.NewFile(uintptr(fds[0]), "lock")
		fds = fds[1:]
	}
	for i, id := range h.Segments {
		st.Segments[id] = os.NewFile(uintptr(fds[i]), id)
	}
	if err := writeMessage(c, struct{ OK bool }{true}, nil); err != nil {
		st.Close()
		return nil, fmt.Errorf("confirm the hand-over: %w", err)
	}
	return st, nil
}

func readFDs(c *net.UnixConn, want int) ([]int, error) {
	var fds []int
	oob := make([]byte, unix.CmsgSpace(4*fdChunk))
	for len(fds) < want {
		var b [1]byte
		n, oobn, _, _, err := c.ReadMsgUnix(b[:], oob)
		if err != nil {
			return fds, fmt.Errorf("read the hand-over's descriptors: %w", err)
		}
		if n == 0 && oobn == 0 {
			return fds, fmt.Errorf("read the hand-over's descriptors: %w", io.ErrUnexpectedEOF)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return fds, err
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				return fds, err
			}
			for _, fd := range got {
				unix.CloseOnExec(fd)
			}
			fds = append(fds, got...)
		}
	}
	if len(fds) != want {
		return fds, fmt.Errorf("the hand-over sent %d descriptors, want %d", len(fds), want)
	}
	return fds, nil
}

// maxMessage bounds a message (a hand-over of many segments lists their ids).
const maxMessage = 64 << 20

func writeMessage(c *net.UnixConn, v any, oob []byte) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	_, _, err = c.WriteMsgUnix(append(b, body...), oob, nil)
	return err
}

func readMessage(c *net.UnixConn, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxMessage {
		return fmt.Errorf("hand-over message of %d bytes", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c, body); err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}
