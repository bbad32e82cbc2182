// Package client is the Go client of the agent's socket. A Client is one
// connection, and so one lease: every tensor it opened is released when it
// closes, or when its process dies.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/memcuda/agent.sock"

// SocketPath returns path, else $MEMCUDA_SOCKET, else DefaultSocket.
func SocketPath(path string) string {
	if path != "" {
		return path
	}
	if p := os.Getenv("MEMCUDA_SOCKET"); p != "" {
		return p
	}
	return DefaultSocket
}

// Client is a connection to the agent. It is safe for concurrent use; calls
// are serialised on the connection.
type Client struct {
	mu   sync.Mutex
	path string
	conn *net.UnixConn
	// reconnect is how long the client tries to reach the agent again when
	// the connection breaks (0: never); reconnects counts the times it did.
	reconnect  time.Duration
	reconnects int
	// lost are names a reattach could not take over: their releases stay here.
	lost    map[string]bool
	nextID  uint64
	fds     []int               // received descriptors not yet claimed by a response
	segs    map[string]*segment // segment id -> descriptor and mapping
	hello   v1.Hello
	name    string
	oob     []byte
	closed  bool
	tensors map[*Tensor]struct{}
	idle    []*segment // mapped segments no tensor uses, oldest first
	// unmapped are segments evicted from idle whose descriptor is still
	// open: closed, and forgotten, before the next request.
	unmapped []*segment
}

// maxIdleMappings bounds the unused segments a client keeps mapped: the
// next get of a tensor in one is warm, and unmapping would wait for GPU
// work still queued on it.
const maxIdleMappings = 8

type segment struct {
	id    string
	fd    int // -1 for legacy segments, which travel as IPC handles
	mode  v1.IPCMode
	size  uint64
	mem   []byte   // host mapping
	gpu   *gpuView // GPU mapping
	users int
}

// Option configures Dial.
type Option func(*Client)

// WithClientName is sent in hello (for the agent's logs).
func WithClientName(n string) Option { return func(c *Client) { c.name = n } }

// WithReconnect sets how long the client tries to reach the agent again
// when its connection breaks (default 30 s; 0: never). See Client.
func WithReconnect(d time.Duration) Option { return func(c *Client) { c.reconnect = d } }

// ErrDisconnected is a broken connection to the agent (it stopped, crashed
// or was replaced); it is also errdefs.ErrUnavailable.
var ErrDisconnected = fmt.Errorf("%w: disconnected from the agent", errdefs.ErrUnavailable)

// Dial connects to the agent and says hello.
//
// When the agent goes away later (a restart, a crash, a hand-over to a new
// instance), the client reconnects by itself within the reconnect window,
// takes its references over to the new connection and keeps its mappings:
// open tensors stay usable. A call in flight is sent again when doing it
// twice is harmless (get, create, reads); otherwise it fails with
// ErrDisconnected.
func Dial(ctx context.Context, path string, opts ...Option) (*Client, error) {
	path = SocketPath(path)
	c := &Client{path: path, segs: map[string]*segment{}, name: "memcuda-go", oob: make([]byte, unix.CmsgSpace(4*v1.MaxFDs)),
		tensors: map[*Tensor]struct{}{}, reconnect: 30 * time.Second, lost: map[string]bool{}}
	for _, o := range opts {
		o(c)
	}
	if err := c.dialLocked(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// dialLocked connects and says hello.
func (c *Client) dialLocked(ctx context.Context) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return fmt.Errorf("%w: connect to the agent at %s: %w", ErrDisconnected, c.path, err)
	}
	c.conn = nc.(*net.UnixConn)
	resp, err := c.exchange(ctx, &v1.Request{Op: v1.OpHello, Client: c.name}, nil)
	if err != nil {
		c.conn.Close()
		return err
	}
	c.hello = *resp.Hello
	if slices.Contains(c.hello.Features, v1.OpCompactRecords) {
		// Records then come in a layout that decodes without reflection.
		if _, err := c.exchange(ctx, &v1.Request{Op: v1.OpCompactRecords}, nil); err != nil {
			c.conn.Close()
			return err
		}
	}
	return nil
}

// retrySafe are the ops sent again after a reconnect: doing them twice is
// doing them once (an extra get or create is the connection's one
// reference in Redis; the reattach counts what this client holds).
var retrySafe = map[string]bool{v1.OpCreate: true, v1.OpGet: true, v1.OpStat: true, v1.OpList: true, v1.OpHolders: true,
	v1.OpStats: true, v1.OpGC: true, v1.OpTrim: true, v1.OpPublish: true}

// reconnectLocked connects again after the connection broke: it offers the
// descriptors of vmm segments this client maps (a crashed agent's memory
// survives only in the processes that hold it) and reattaches its references.
func (c *Client) reconnectLocked(ctx context.Context, cause error) error {
	if c.reconnect <= 0 {
		return cause
	}
	oldHolder, oldAgent := c.hello.Holder, c.hello.Agent
	c.conn.Close()
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	c.unmapped = nil // the new connection never had their descriptors
	deadline := time.Now().Add(c.reconnect)
	for wait := 2 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		err := c.dialLocked(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrDisconnected) || time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("the agent at %s went away (%w) and did not come back within %s: %w", c.path, cause, c.reconnect, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (reconnecting after: %w)", ctx.Err(), cause)
		case <-time.After(wait):
		}
	}
	c.reconnects++
	if c.hello.Agent != oldAgent && slices.Contains(c.hello.Features, v1.OpOffer) {
		var ids []string
		var fds []int
		flush := func() error {
			if len(ids) == 0 {
				return nil
			}
			_, err := c.exchange(ctx, &v1.Request{Op: v1.OpOffer, Segments: ids}, fds)
			ids, fds = nil, nil
			if errors.Is(err, ErrDisconnected) {
				return err
			}
			return nil // a segment the agent did not take: it says why in its log
		}
		for _, s := range c.segs {
			if s.mode == v1.ModeVMM && s.fd >= 0 && s.mapped() {
				ids, fds = append(ids, s.id), append(fds, s.fd)
				if len(ids) == v1.MaxFDs {
					if err := flush(); err != nil {
						return err
					}
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
	counts := map[string]int64{}
	for t := range c.tensors {
		if !c.lost[t.Info.Name] {
			counts[t.Info.Name]++
		}
	}
	if len(counts) == 0 || oldHolder == "" {
		return nil
	}
	refs := make([]v1.Ref, 0, len(counts))
	for n, k := range counts {
		refs = append(refs, v1.Ref{Name: n, Count: k})
	}
	slices.SortFunc(refs, func(a, b v1.Ref) int { return strings.Compare(a.Name, b.Name) })
	if !slices.Contains(c.hello.Features, v1.OpReattach) {
		for _, r := range refs {
			c.lost[r.Name] = true
		}
		return nil
	}
	resp, err := c.exchange(ctx, &v1.Request{Op: v1.OpReattach, Holder: oldHolder, Refs: refs}, nil)
	if err != nil {
		return fmt.Errorf("reattach after reconnecting: %w", err)
	}
	for _, n := range resp.Lost {
		c.lost[n] = true
	}
	return nil
}

// Reconnects is how many times the client reconnected to its agent.
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// Hello is what the agent said when the connection opened.
func (c *Client) Hello() v1.Hello { return c.hello }

// call sends one request and reads its response, claiming attached descriptors.
func (c *Client) call(ctx context.Context, req *v1.Request) (*v1.Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.callLocked(ctx, req)
}

// callLocked is call with c.mu held. Descriptors of segments unmapped since
// the last call are closed and forgotten first, so that the agent's view of
// what this client holds is right for the request.
func (c *Client) callLocked(ctx context.Context, req *v1.Request) (*v1.Response, error) {
	if c.closed {
		return nil, fmt.Errorf("%w: client is closed", errdefs.ErrFailedPrecondition)
	}
	err := c.forgetLocked(ctx)
	var resp *v1.Response
	if err == nil {
		resp, err = c.exchange(ctx, req, nil)
	}
	if !errors.Is(err, ErrDisconnected) {
		return resp, err
	}
	if rerr := c.reconnectLocked(ctx, err); rerr != nil {
		return nil, rerr
	}
	switch {
	case req.Op == v1.OpRelease:
		return &v1.Response{OK: true}, nil // the reattach left this reference out
	case !retrySafe[req.Op]:
		return nil, fmt.Errorf("the agent went away while %s was in flight; it may or may not have been applied (reconnected to instance %s): %w",
			req.Op, c.hello.Agent, err)
	}
	return c.exchange(ctx, req, nil)
}

// forgetLocked closes the descriptors of segments evicted from the idle
// mappings (an open descriptor keeps the segment's memory allocated) and
// tells the agent, which sends them again when needed.
func (c *Client) forgetLocked(ctx context.Context) error {
	for len(c.unmapped) > 0 {
		s := c.unmapped[len(c.unmapped)-1]
		c.unmapped = c.unmapped[:len(c.unmapped)-1]
		if s.users > 0 || s.mapped() || s.fd < 0 {
			continue // mapped again meanwhile
		}
		unix.Close(s.fd)
		s.fd = -1
		if _, err := c.exchange(ctx, &v1.Request{Op: v1.OpForget, Segment: s.id}, nil); err != nil {
			return fmt.Errorf("forget segment %s: %w", s.id, err)
		}
	}
	return nil
}

// exchange writes req, with fds attached, and reads its answer, with c.mu held.
func (c *Client) exchange(ctx context.Context, req *v1.Request, fds []int) (*v1.Response, error) {
	c.nextID++
	req.ID = c.nextID
	frame, err := v1.EncodeRequestFDs(req, len(fds))
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	} else {
		c.conn.SetDeadline(time.Time{})
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.conn.WriteMsgUnix(frame, oob, nil); err != nil {
		return nil, c.ioErr("send to agent", err)
	}
	var hb [v1.HeaderSize]byte
	if err := c.readFull(hb[:]); err != nil {
		return nil, err
	}
	h, err := v1.ParseHeader(hb[:])
	if err != nil {
		return nil, err
	}
	body := make([]byte, h.BodyLen)
	if err := c.readFull(body); err != nil {
		return nil, err
	}
	resp, err := v1.DecodeResponse(body)
	if err != nil {
		return nil, err
	}
	if len(resp.FDs) != h.NumFDs || len(c.fds) < h.NumFDs {
		return nil, fmt.Errorf("%w: response announces %d descriptors, %d arrived", v1.ErrFrame, h.NumFDs, len(c.fds))
	}
	for i, id := range resp.FDs {
		fd := c.fds[i]
		if old := c.segs[id]; old != nil {
			if old.fd < 0 && !old.mapped() {
				old.fd = fd // sent again after a forget
			} else {
				unix.Close(fd) // already have it
			}
			continue
		}
		c.segs[id] = &segment{id: id, fd: fd}
	}
	c.fds = c.fds[h.NumFDs:]
	if resp.ID != req.ID && resp.ID != 0 {
		return nil, fmt.Errorf("%w: response id %d for request %d", v1.ErrFrame, resp.ID, req.ID)
	}
	if resp.Error != nil {
		return nil, errdefs.FromCode(resp.Error.Code, resp.Error.Message)
	}
	return resp, nil
}

// readFull reads len(b) bytes, collecting any descriptors that come along.
func (c *Client) readFull(b []byte) error {
	for got := 0; got < len(b); {
		n, oobn, _, _, err := c.conn.ReadMsgUnix(b[got:], c.oob)
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(c.oob[:oobn])
			if perr == nil {
				for _, m := range msgs {
					if fds, err := unix.ParseUnixRights(&m); err == nil {
						for _, fd := range fds {
							unix.CloseOnExec(fd)
						}
						c.fds = append(c.fds, fds...)
					}
				}
			}
		}
		got += n
		if err != nil {
			return c.ioErr("read from agent", err)
		}
		if n == 0 && oobn == 0 {
			return fmt.Errorf("%w: the agent closed the connection", ErrDisconnected)
		}
	}
	return nil
}

// ioErr classifies a socket error: a deadline is the caller's, anything
// else a broken connection.
func (c *Client) ioErr(what string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s: %w (%w)", what, context.DeadlineExceeded, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrDisconnected, what, err)
}

// Close releases every tensor of the connection (the agent drops the lease)
// and unmaps what the client mapped.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for t := range c.tensors {
		t.data = nil
	}
	for _, s := range c.segs {
		errs = append(errs, s.unmap())
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
	}
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	errs = append(errs, c.conn.Close())
	return errors.Join(errs...)
}

// Tensor is an opened tensor: one reference held by the connection.
type Tensor struct {
	Info     v1.Tensor
	c        *Client
	seg      *segment
	data     []byte
	released bool
}

// Bytes is the tensor's memory (host backend), shared with every process
// that opened it. It is nil for GPU tensors and after Release.
func (t *Tensor) Bytes() []byte { return t.data }

// DevicePtr is the tensor's address on its GPU in this process, and the CUDA
// ordinal of that GPU here (its UUID resolved under this process's
// CUDA_VISIBLE_DEVICES). ok is false for host tensors and after Release.
func (t *Tensor) DevicePtr() (ptr uint64, ordinal int, ok bool) {
	if t.released || t.seg == nil || t.seg.gpu == nil {
		return 0, 0, false
	}
	return uint64(t.seg.gpu.ptr) + t.Info.Offset, t.seg.gpu.dev.Ordinal, true
}

func (c *Client) unidle(s *segment) {
	for i, x := range c.idle {
		if x == s {
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			return
		}
	}
}

// mapped reports whether the segment is mapped in this process.
func (s *segment) mapped() bool { return s.mem != nil || s.gpu != nil }

func (s *segment) unmap() error {
	var err error
	if s.mem != nil {
		err = unix.Munmap(s.mem)
		s.mem = nil
	}
	if s.gpu != nil {
		err = errors.Join(err, s.gpu.close())
		s.gpu = nil
	}
	return err
}

// open takes the reference and maps the tensor under one hold of c.mu:
// between the answer and the mapping no other call may evict the segment
// or forget its descriptor.
func (c *Client) open(ctx context.Context, req *v1.Request) (*Tensor, error) {
	c.mu.Lock()
	resp, err := c.callLocked(ctx, req)
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	t := &Tensor{Info: *resp.Tensor, c: c}
	err = c.mapTensorLocked(t)
	c.mu.Unlock()
	if err != nil {
		_ = t.Release(ctx)
		return nil, err
	}
	return t, nil
}

func (c *Client) mapTensorLocked(t *Tensor) error {
	if len(t.Info.Pieces) > 0 {
		// The agent gives such tensors only to clients that sent pieces,
		// which this one never does.
		return fmt.Errorf("%w: tensor %q lies in pieces, which this client does not map", errdefs.ErrFailedPrecondition, t.Info.Name)
	}
	s := c.segs[t.Info.SegmentID]
	if s == nil && t.Info.IPCMode == v1.ModeLegacy {
		s = &segment{id: t.Info.SegmentID, fd: -1}
		c.segs[s.id] = s
	}
	if s == nil {
		return fmt.Errorf("%w: agent sent no descriptor for segment %s", errdefs.ErrInternal, t.Info.SegmentID)
	}
	t.seg = s
	s.mode = t.Info.IPCMode
	s.users++
	c.tensors[t] = struct{}{}
	c.unidle(s)
	if t.Info.IPCMode != v1.ModeHost {
		if s.gpu == nil {
			g, err := mapGPU(s.fd, t.Info)
			if err != nil {
				return err
			}
			s.gpu = g
		}
		return nil
	}
	if s.mem == nil {
		mem, err := unix.Mmap(s.fd, 0, int(t.Info.SegmentSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map segment %s: %w", s.id, err)
		}
		s.mem, s.size = mem, t.Info.SegmentSize
	}
	end := t.Info.Offset + t.Info.Bytes
	if end > s.size {
		return fmt.Errorf("%w: tensor [%d,%d) outside segment of %d bytes", errdefs.ErrInternal, t.Info.Offset, end, s.size)
	}
	t.data = s.mem[t.Info.Offset:end:end]
	return nil
}

// Release drops the tensor's reference. Its memory must not be used after.
// The segment is unmapped when no tensor of this client uses it.
func (t *Tensor) Release(ctx context.Context) error {
	c := t.c
	c.mu.Lock()
	if t.released {
		c.mu.Unlock()
		return nil
	}
	t.released = true
	t.data = nil
	delete(c.tensors, t)
	if s := t.seg; s != nil {
		if s.users--; s.users == 0 {
			c.idle = append(c.idle, s)
			for len(c.idle) > maxIdleMappings {
				c.evict(c.idle[0])
				c.idle = c.idle[1:]
			}
		}
	}
	closed := c.closed
	lost := c.lost[t.Info.Name]
	if lost && !c.holdsLocked(t.Info.Name) {
		delete(c.lost, t.Info.Name)
	}
	c.mu.Unlock()
	if closed || lost {
		return nil // the lease went with the connection, or with the agent's restart
	}
	_, err := c.call(ctx, &v1.Request{Op: v1.OpRelease, Name: t.Info.Name})
	return err
}

// holdsLocked reports whether an open tensor of this client is name.
func (c *Client) holdsLocked(name string) bool {
	for t := range c.tensors {
		if t.Info.Name == name {
			return true
		}
	}
	return false
}

// evict unmaps an unused segment. When the agent can send the descriptor
// again, the next call closes it and tells the agent (forget): an open
// descriptor keeps the segment's memory allocated even after the agent
// gives the segment back.
func (c *Client) evict(s *segment) {
	s.unmap()
	if s.fd >= 0 && slices.Contains(c.hello.Features, v1.OpForget) {
		c.unmapped = append(c.unmapped, s)
	}
}

// CreateOption configures Create.
type CreateOption func(*v1.Request)

// OnDevice picks the device by ordinal ("0") or UUID.
func OnDevice(dev string) CreateOption { return func(r *v1.Request) { r.Device = dev } }

// Create makes a tensor (or opens the existing one of the same dtype and
// shape) and holds a reference on it.
func (c *Client) Create(ctx context.Context, name, dtype string, shape []int64, opts ...CreateOption) (*Tensor, error) {
	req := &v1.Request{Op: v1.OpCreate, Name: name, DType: dtype, Shape: shape}
	for _, o := range opts {
		o(req)
	}
	return c.open(ctx, req)
}

// Get opens an existing tensor by name and holds a reference on it.
func (c *Client) Get(ctx context.Context, name string) (*Tensor, error) {
	return c.open(ctx, &v1.Request{Op: v1.OpGet, Name: name})
}

// Delete drops the registry's reference: no new gets; the memory goes when
// the last reference does.
func (c *Client) Delete(ctx context.Context, name string) error {
	_, err := c.call(ctx, &v1.Request{Op: v1.OpDelete, Name: name})
	return err
}

// Stat returns a tensor's record.
func (c *Client) Stat(ctx context.Context, name string) (v1.Tensor, error) {
	resp, err := c.call(ctx, &v1.Request{Op: v1.OpStat, Name: name})
	if err != nil {
		return v1.Tensor{}, err
	}
	return *resp.Tensor, nil
}

// ListOption narrows a list.
type ListOption func(*listOptions)

type listOptions struct{ prefix string }

// WithPrefix lists the names that start with prefix.
func WithPrefix(prefix string) ListOption { return func(o *listOptions) { o.prefix = prefix } }

// List returns the records of the agent's tensors in name order, read in
// pages of v1.MaxListLimit (an agent too old for pages answers in one).
func (c *Client) List(ctx context.Context, opts ...ListOption) ([]v1.Tensor, error) {
	var o listOptions
	for _, f := range opts {
		f(&o)
	}
	if !slices.Contains(c.hello.Features, v1.FeatureListPages) {
		if o.prefix != "" {
			return nil, fmt.Errorf("%w: agent %s lists no prefixes", errdefs.ErrUnimplemented, c.hello.Software)
		}
		resp, err := c.call(ctx, &v1.Request{Op: v1.OpList})
		if err != nil {
			return nil, err
		}
		return resp.Tensors, nil
	}
	var out []v1.Tensor
	for cursor := ""; ; {
		page, next, err := c.ListPage(ctx, o.prefix, cursor, v1.MaxListLimit)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if next == "" {
			return out, nil
		}
		cursor = next
	}
}

// ListPage returns at most limit records of names starting with prefix,
// after cursor, and the cursor of the next page ("" after the last).
func (c *Client) ListPage(ctx context.Context, prefix, cursor string, limit int) ([]v1.Tensor, string, error) {
	resp, err := c.call(ctx, &v1.Request{Op: v1.OpList, Prefix: prefix, Cursor: cursor, Limit: limit})
	if err != nil {
		return nil, "", err
	}
	return resp.Tensors, resp.Next, nil
}

// Holders returns a tensor's reference holders and their counts.
func (c *Client) Holders(ctx context.Context, name string) (map[string]int64, error) {
	resp, err := c.call(ctx, &v1.Request{Op: v1.OpHolders, Name: name})
	if err != nil {
		return nil, err
	}
	return resp.Holders, nil
}

// Stats returns the agent's pool statistics.
func (c *Client) Stats(ctx context.Context) (*v1.Stats, error) {
	resp, err := c.call(ctx, &v1.Request{Op: v1.OpStats})
	if err != nil {
		return nil, err
	}
	return resp.Stats, nil
}

// GC asks the agent to drop the references of dead processes now.
func (c *Client) GC(ctx context.Context) (*v1.GCResult, error) {
	resp, err := c.call(ctx, &v1.Request{Op: v1.OpGC})
	if err != nil {
		return nil, err
	}
	return resp.GC, nil
}

// Trim asks the agent to release cached free segments.
func (c *Client) Trim(ctx context.Context) (uint64, error) {
	resp, err := c.call(ctx, &v1.Request{Op: v1.OpTrim})
	if err != nil {
		return 0, err
	}
	return resp.Trimmed, nil
}
