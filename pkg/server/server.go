package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/blockingnet"
	"github.com/memcuda/memcuda/internal/osthread"
	"github.com/memcuda/memcuda/internal/peakmap"
	"github.com/memcuda/memcuda/internal/procinfo"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
	"github.com/memcuda/memcuda/pkg/tensor"
)

// Software is reported in hello.
var Software = "memcuda-agent dev"

// Observer records each handled operation (the agent's metrics).
type Observer interface {
	Observe(path, op string, err error, start time.Time)
}

type noObserver struct{}

func (noObserver) Observe(string, string, error, time.Time) {}

// Server serves one listener.
type Server struct {
	st      Store
	log     *slog.Logger
	obs     Observer
	timeout time.Duration

	auth      Authorizer
	allowHost bool

	maxConns    int
	readTimeout time.Duration
	idleTimeout time.Duration
	hot         hotSlots
	parker      *blockingnet.Parker
	hotSpin     time.Duration
	spinning    hotSlots // connections polling at once (see frameReader.spinRead)
	// Polls that found the next request within the hot spin, those that
	// did not (the connection then blocked), and those not made because
	// the node was busy (WithHotSpinGate).
	spinCaught, spinMissed, spinSkipped atomic.Uint64
	spinGate                            SpinGate
	spinOn                              atomic.Bool // polls may run (always, without a SpinGate)

	mu            sync.Mutex
	ln            *net.UnixListener
	conns         peakmap.Map[*conn, struct{}]
	wg            sync.WaitGroup
	giveBackTimer *time.Timer // runs giveBack once a crowd has gone
	// handingOver: connections close without dropping their references
	// (their clients reattach to the next instance).
	handingOver atomic.Bool
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithObserver records every operation.
func WithObserver(o Observer) Option { return func(s *Server) { s.obs = o } }

// WithOpTimeout bounds the time of one operation (default 10s).
func WithOpTimeout(d time.Duration) Option { return func(s *Server) { s.timeout = d } }

// WithMaxConnections bounds the open connections (default 16384); one
// past it is answered unavailable and closed.
func WithMaxConnections(n int) Option { return func(s *Server) { s.maxConns = n } }

// WithReadTimeout bounds the time from a request frame's first byte to its
// last (default 10s): a client that sends a frame slowly is disconnected.
func WithReadTimeout(d time.Duration) Option { return func(s *Server) { s.readTimeout = d } }

// WithIdleTimeout closes connections that hold no references and sent
// nothing for d (default 0: never; a connection that holds references is a
// lease and stays).
func WithIdleTimeout(d time.Duration) Option { return func(s *Server) { s.idleTimeout = d } }

// WithHotConnections bounds the connections that wait for their next
// request in a blocking read, each on a thread of its own (default 512);
// the others wait parked, on one thread for all.
func WithHotConnections(n int) Option { return func(s *Server) { s.hot = make(hotSlots, max(n, 1)) } }

// WithHotSpin has a hot connection poll for its next request for up to d
// before its blocking read, at most n connections at once (default: off).
// A request that arrives within d is read by a thread that is already
// running, without the wake-up of one blocked in read, which after an
// idle of some tens of microseconds is the larger part of an answer's
// time. The price is up to d of one CPU after each request: n bounds it
// to n CPUs.
func WithHotSpin(d time.Duration, n int) Option {
	return func(s *Server) { s.hotSpin, s.spinning = d, make(hotSlots, max(n, 0)) }
}

// SpinGate decides whether WithHotSpin's polls may run until it is asked
// again, given whether they were on since it was last asked
// (nodecpu.Gate).
type SpinGate interface {
	Allow(on bool) (bool, error)
}

// gateEvery is how often WithHotSpinGate's gate is asked.
const gateEvery = 100 * time.Millisecond

// WithHotSpinGate keeps WithHotSpin's polls to CPUs nobody else wants:
// every 100 ms the server asks g whether they may run. Polls start off,
// stop at once when g says so (a spin in progress too), and stay off while
// g fails.
func WithHotSpinGate(g SpinGate) Option { return func(s *Server) { s.spinGate = g } }

// HotSpins counts the polls of WithHotSpin: those that read the next
// request within the spin, those that ended without one, and those not
// made because the node was busy (WithHotSpinGate).
func (s *Server) HotSpins() (caught, missed, skipped uint64) {
	return s.spinCaught.Load(), s.spinMissed.Load(), s.spinSkipped.Load()
}

// HotSpinOn is whether polls may run now (always with WithHotSpin alone).
func (s *Server) HotSpinOn() bool { return s.spinOn.Load() }

// gateSpins asks the gate of WithHotSpinGate until ctx ends.
func (s *Server) gateSpins(ctx context.Context) {
	t := time.NewTicker(gateEvery)
	defer t.Stop()
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		on, err := s.spinGate.Allow(s.spinOn.Load())
		if err != nil && !failed {
			s.log.Warn("hot spin: cannot read how busy the node is; polls are off until it can", "err", err)
		}
		failed = err != nil
		s.spinOn.Store(on && err == nil)
	}
}

// New returns a server over st.
func New(st Store, opts ...Option) *Server {
	s := &Server{st: st, log: slog.Default(), obs: noObserver{}, timeout: 10 * time.Second,
		maxConns: 16384, readTimeout: 10 * time.Second, hot: make(hotSlots, 512)}
	for _, o := range opts {
		o(s)
	}
	s.spinOn.Store(s.spinGate == nil)
	return s
}

// Serve accepts connections until ctx ends, then closes the listener and
// every connection (dropping their leases) and returns.
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	parker, err := blockingnet.NewParker()
	if err != nil {
		return err
	}
	s.parker = parker
	defer parker.Close()
	s.mu.Lock()
	s.ln = l
	s.mu.Unlock()
	if s.hotSpin > 0 && cap(s.spinning) > 0 && s.spinGate != nil {
		go s.gateSpins(ctx)
	}
	go func() {
		<-ctx.Done()
		l.Close()
		s.mu.Lock()
		for c := range s.conns.All() {
			c.raw.Shutdown() // wakes its thread; the serving goroutine closes it
		}
		if s.giveBackTimer != nil {
			s.giveBackTimer.Stop()
		}
		s.mu.Unlock()
	}()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || s.handingOver.Load() {
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.wg.Wait()
			return err
		}
		s.mu.Lock()
		full := s.conns.Len() >= s.maxConns
		s.mu.Unlock()
		if full {
			s.refuse(c)
			continue
		}
		cn := &conn{srv: s, holder: s.st.OpenLease()} // its maps are made on first use: most connections idle
		if cred, err := procinfo.PeerCred(c); err == nil {
			cn.pid, cn.uid = int(cred.Pid), int(cred.Uid)
		}
		if cn.raw, err = blockingnet.Detach(c); err == nil {
			err = cn.raw.SetReadTimeout(hotWait)
		}
		if err != nil {
			s.log.Warn("could not take over a connection", "err", err)
			if cn.raw != nil {
				cn.raw.Close()
			} else {
				c.Close()
			}
			s.st.CloseLease(ctx, cn.holder, nil)
			continue
		}
		if s.auth != nil {
			cn.id, cn.idErr = s.auth.Identify(ctx, cn.pid)
		}
		s.mu.Lock()
		s.conns.Set(cn, struct{}{})
		s.mu.Unlock()
		s.wg.Add(1)
		cn.fr = &frameReader{raw: cn.raw, srv: s, parkNext: true, idleFor: func() bool { return len(cn.leases) == 0 },
			resume: func(err error) { cn.fr.woke, cn.fr.wokeErr = true, err; cn.serve() }}
		go cn.serve()
	}
}

// HandOver stops serving for a successor and returns the listening socket
// for it: no new connection is accepted (pending ones stay queued in the
// socket for the successor), every connection finishes the request it is
// in and is closed without dropping its references, and the registry
// writes still running finish. Serve then returns nil.
func (s *Server) HandOver(ctx context.Context) (*os.File, error) {
	s.mu.Lock()
	l := s.ln
	s.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("%w: the server is not serving", errdefs.ErrFailedPrecondition)
	}
	f, err := l.File()
	if err != nil {
		return nil, fmt.Errorf("duplicate the listening socket: %w", err)
	}
	s.handingOver.Store(true)
	l.SetUnlinkOnClose(false) // the path is the successor's now
	l.Close()
	s.mu.Lock()
	for c := range s.conns.All() {
		c.raw.ShutdownRead() // a request being served still gets its answer
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		f.Close()
		return nil, ctx.Err()
	}
	return f, nil
}

// refuse answers a connection past the limit with the reason and closes it.
func (s *Server) refuse(c *net.UnixConn) {
	s.log.Warn("connection refused: the agent serves its most connections", "max_connections", s.maxConns)
	frame, err := v1.EncodeResponse(errorResponse(0, fmt.Errorf("%w: the agent serves at most %d connections (--max-connections)", errdefs.ErrUnavailable, s.maxConns)))
	if err == nil {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(frame)
	}
	c.Close()
}

type conn struct {
	id    Identity // set when the server has an Authorizer
	idErr error
	// raw is the connection, detached from Go's network poller: blocking
	// I/O on the serving goroutine's locked thread.
	raw    *blockingnet.Conn
	srv    *Server
	holder string
	pid    int
	uid    int
	// leases counts the references this connection holds per name. Redis
	// records one reference for the connection while the count is positive:
	// further gets and releases on the same connection stay in the agent.
	leases map[string]int64
	infos  map[string]*v1.Tensor // record of each leased tensor, as first returned (answers share it)
	sent   map[string]bool       // segment ids whose descriptor this peer has
	// compact: answers of one tensor record go in the compact layout (OpCompactRecords).
	compact bool
	// pieces: the client maps tensors in pieces (OpPieces).
	pieces bool
	events map[string]*sharedEvent // IPC events this peer sent, opened here
	fr     *frameReader            // its request frames, kept across the goroutines that serve it
	// in are the descriptors the request being handled came with (an
	// offer's); a handler that keeps them sets it to nil.
	in []int
	// commit is the registry write of the request just handled, when it was
	// answered first: started once the answer is written. It runs beside
	// the connection's next requests (a cold get's descriptor import in the
	// client takes as long as the write); the store orders it before any
	// later request on the same name.
	commit store.Commit
	// req and resp are the request being handled and its answer, reused
	// (nothing keeps either past its reply).
	req  v1.Request
	resp v1.Response
	// watching: a watch was answered (OpWatch); the connection serves
	// segment news from now on.
	watching bool
}

// serve serves the connection until it closes, or until it goes idle on a
// thread of its own: then another goroutine carries on parked, and this one
// returns with its thread still locked, which ends the thread. So a burst
// of busy connections leaves no threads behind once they go quiet.
func (cn *conn) serve() {
	switch cn.serveFrames() {
	case servedHandoff:
		go cn.serve()
		return
	case servedParked:
		return // the Parker's callback carries on
	case servedWatch:
		go cn.pushSegments() // on a goroutine with no thread of its own
		return
	}
	cn.close()
	cn.srv.forget(cn)
	cn.srv.wg.Done()
}

// forget drops a closed connection. When a crowd of connections has gone
// (the map of them was made anew), the memory and threads they used go back
// to the system soon rather than over minutes (memory) or never (threads):
// once the crowd has stopped shrinking for giveBackAfter.
func (s *Server) forget(cn *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.conns.Delete(cn) {
		return
	}
	if s.giveBackTimer == nil {
		s.giveBackTimer = time.AfterFunc(giveBackAfter, s.giveBack)
	} else {
		s.giveBackTimer.Reset(giveBackAfter)
	}
}

// giveBackAfter is how long after a crowd's last step its memory and
// threads are given back: a crowd that closes at once takes a while.
const giveBackAfter = time.Second

// giveBack returns what a crowd of connections left: the heap it grew and
// the threads the runtime started for it. Every idle thread is ended (the
// runtime starts one again when it needs it); the threads hot connections
// hold are locked to them and stay.
func (s *Server) giveBack() {
	debug.FreeOSMemory()
	debug.FreeOSMemory() // the second collection drops what pools kept through the first
	had := osthread.Count()
	left := osthread.Trim(0)
	s.log.Debug("a crowd of connections has gone: memory and threads given back", "threads", had, "threads_left", left, "hot", len(s.hot), "connections", s.connections(), "goroutines", runtime.NumGoroutine())
}

func (s *Server) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns.Len()
}

// log is the connection's logger. Made when something is logged, not per
// wake: a parked connection wakes for every byte a slow client sends.
func (cn *conn) log() *slog.Logger { return cn.srv.log.With("peer_pid", cn.pid, "holder", cn.holder) }

// close drops the connection's leases and events.
func (cn *conn) close() {
	cn.fr.release()
	cn.fr.closeFDs()
	cn.raw.Close()
	names := make([]string, 0, len(cn.leases))
	for n := range cn.leases {
		names = append(names, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cn.srv.timeout)
	defer cancel()
	for _, ev := range cn.events {
		ev.Release()
	}
	if cn.srv.handingOver.Load() {
		return // its client reattaches its references to the successor
	}
	if err := cn.srv.st.CloseLease(ctx, cn.holder, names); err != nil {
		cn.log().Warn("could not drop the leases of a closed connection now; GC will", "err", err)
	} else if len(names) > 0 {
		cn.log().Debug("dropped leases of a closed connection", "tensors", len(names))
	}
}

// served is how serveFrames stopped.
type served int

const (
	servedClosed  served = iota // the connection ended
	servedHandoff               // idle while this goroutine holds a thread: park it on another
	servedParked                // the Parker watches it: its callback serves it again
	servedWatch                 // it became a watch of segments (pushSegments)
)

// serveFrames answers requests until the connection ends or goes idle.
func (cn *conn) serveFrames() served {
	for {
		h, body, err := cn.fr.next()
		if err != nil {
			switch {
			case errors.Is(err, errHandoff):
				return servedHandoff
			case errors.Is(err, errParked):
				return servedParked
			case errors.Is(err, errReadTimeout), errors.Is(err, errIdleTimeout):
				cn.log().Info("closing connection", "reason", err)
			case errors.Is(err, v1.ErrFrame):
				cn.log().Warn("closing connection after a bad frame", "err", err)
				cn.reply(&v1.Response{Error: &v1.Error{Code: errdefs.CodeInvalidArgument, Message: err.Error()}}, nil)
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrClosed) && !errors.Is(err, unix.ECONNRESET):
				cn.log().Warn("closing connection after a read error", "err", err)
			}
			return servedClosed
		}
		var resp *v1.Response
		var fds []int
		in, whole := cn.fr.takeFDs(int(h.NumFDs))
		req := &cn.req
		if h.Kind != v1.KindRequest || !whole {
			resp = errorResponse(0, errdefs.Invalid("expected a request frame (with the descriptors it announces)"))
		} else if err := v1.DecodeRequestInto(body, req); err != nil {
			resp = errorResponse(0, errdefs.Invalid("%v", err))
		} else if len(in) > 0 && req.Op != v1.OpOffer {
			resp = errorResponse(req.ID, errdefs.Invalid("only an offer carries descriptors, not a %s", req.Op))
		} else {
			cn.in, in = in, nil
			start := time.Now()
			h, known := handlers[req.Op]
			resp, fds, err = cn.handle(h, req)
			op := req.Op
			if !known {
				op = "unknown" // a client's string: a metric label only for ops that exist
			}
			cn.srv.obs.Observe("socket", op, err, start)
			if err != nil {
				cn.log().Debug("request failed", "op", req.Op, "name", req.Name, "err", err)
				resp = errorResponse(req.ID, err)
			}
			in, cn.in = cn.in, nil // what the handler did not take
		}
		for _, fd := range in {
			unix.Close(fd)
		}
		werr := cn.reply(resp, fds)
		cn.srv.st.AfterAnswer() // written or not
		if c := cn.commit; c != nil {
			cn.commit = nil
			cn.srv.wg.Add(1)
			go cn.runCommit(c)
		}
		if werr != nil {
			cn.log().Debug("write failed", "err", werr)
			return servedClosed
		}
		if cn.watching {
			return servedWatch
		}
	}
}

func (cn *conn) runCommit(c store.Commit) {
	defer cn.srv.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), cn.srv.timeout)
	defer cancel()
	start := time.Now()
	c(ctx)
	cn.srv.obs.Observe("socket", "registry_write", nil, start)
}

func errorResponse(id uint64, err error) *v1.Response {
	return &v1.Response{ID: id, Error: &v1.Error{Code: errdefs.Code(err), Message: err.Error()}}
}

func (cn *conn) reply(resp *v1.Response, fds []int) error {
	pool := &replyBufs
	if len(resp.Tensors) > 64 {
		pool = &listReplyBufs // a page of a list: up to the frame cap
	}
	buf := pool.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledReply || pool == &listReplyBufs {
			pool.Put(buf)
		}
	}()
	frame, ok := []byte(nil), false
	if cn.compact {
		frame, ok = v1.AppendCompactResponse((*buf)[:0], resp)
	}
	var err error
	if !ok {
		frame, err = v1.AppendResponse((*buf)[:0], resp)
	}
	if err == nil {
		*buf = frame // grown, when it had to
	}
	if errors.Is(err, v1.ErrFrame) {
		// An answer over the frame cap (a list of too many tensors without
		// a limit): the peer gets the reason, the connection stays.
		cn.srv.log.Warn("answer too large for one frame", "peer_pid", cn.pid, "err", err)
		frame, err = v1.EncodeResponse(errorResponse(resp.ID, fmt.Errorf("%w: the answer does not fit in one frame (%w); "+
			"list in pages (limit and cursor)", errdefs.ErrFailedPrecondition, err)))
		fds = nil
	}
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, err = cn.raw.WriteMsg(frame, oob)
	return err
}

// replyBufs hold answers while they are written: most are a few hundred
// bytes, and a connection keeps none while it idles.
var replyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledReply bounds the buffers kept in replyBufs.
const maxPooledReply = 64 << 10

// listReplyBufs hold the answers of list pages: paging through a large
// registry would otherwise make a buffer of hundreds of KiB per page, and
// the collections that garbage causes scan every tensor's record.
var listReplyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 256<<10); return &b }}

// handler serves one operation: it fills resp (already carrying the
// request's id and ok) and returns the descriptors to attach.
type handler func(cn *conn, ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error)

// handlers has one method per operation.
var handlers = map[string]handler{
	v1.OpHello:          (*conn).hello,
	v1.OpCreate:         (*conn).create,
	v1.OpGet:            (*conn).get,
	v1.OpRelease:        (*conn).release,
	v1.OpPublish:        (*conn).publish,
	v1.OpDelete:         (*conn).delete,
	v1.OpStat:           (*conn).stat,
	v1.OpList:           (*conn).list,
	v1.OpStats:          (*conn).stats,
	v1.OpGC:             (*conn).gc,
	v1.OpTrim:           (*conn).trim,
	v1.OpForget:         (*conn).forget,
	v1.OpHolders:        (*conn).holders,
	v1.OpReattach:       (*conn).reattach,
	v1.OpOffer:          (*conn).offer,
	v1.OpWatch:          (*conn).watch,
	v1.OpCompactRecords: (*conn).compactRecords,
	v1.OpPieces:         (*conn).takePieces,
}

// handle serves req with h, its op's handler (nil: an op this agent lacks).
func (cn *conn) handle(h handler, req *v1.Request) (*v1.Response, []int, error) {
	if h == nil {
		// A newer client may speak ops this agent does not have.
		return nil, nil, fmt.Errorf("%w: this agent has no op %q (%s)", errdefs.ErrUnimplemented, req.Op, Software)
	}
	if err := cn.scope(req); err != nil {
		return nil, nil, err
	}
	cn.resp = v1.Response{ID: req.ID, OK: true}
	resp := &cn.resp
	if fds, ok := cn.warm(req, resp); ok {
		return resp, fds, nil
	}
	ctx := newRequestContext(cn.srv.timeout)
	defer ctx.end()
	fds, err := h(cn, ctx, req, resp)
	if err != nil {
		return nil, nil, err
	}
	return resp, fds, nil
}

func (cn *conn) hello(ctx context.Context, _ *v1.Request, resp *v1.Response) ([]int, error) {
	st := cn.srv.st
	devs := st.Devices()
	wire := make([]v1.Device, len(devs))
	for i, d := range devs {
		wire[i] = v1.Device{Index: d.Index, UUID: d.UUID, PCIBusID: d.PCIBusID, Name: d.Name, Total: d.Total}
	}
	resp.Hello = &v1.Hello{
		Version: v1.Version, Agent: st.Instance(), Node: st.Node(), Mode: st.Mode(), Devices: wire,
		PeerPID: cn.pid, Redis: st.Ping(ctx) == nil, Software: Software, Holder: cn.holder,
		Features: []string{v1.OpForget, v1.OpHolders, v1.FeatureListPages, v1.OpReattach, v1.OpOffer, v1.OpWatch, v1.OpCompactRecords, v1.OpPieces},
	}
	return nil, nil
}

// compactRecords makes reply write this connection's answers of one
// tensor record in the compact layout, from the next answer on.
func (cn *conn) compactRecords(context.Context, *v1.Request, *v1.Response) ([]int, error) {
	cn.compact = true
	return nil, nil
}

// takePieces marks the connection's client as one that maps tensors in
// pieces: its creates may be given pieces, and it may get such tensors.
func (cn *conn) takePieces(context.Context, *v1.Request, *v1.Response) ([]int, error) {
	cn.pieces = true
	return nil, nil
}

// mappable refuses a tensor in pieces to a client that cannot map it
// (before any reference is taken: such a client's create of an existing
// name is a get too).
func (cn *conn) mappable(name string) error {
	if !cn.pieces && cn.srv.st.Pieced(name) {
		return fmt.Errorf("%w: tensor %q lies in pieces, which this client cannot map: use a client that sends %q",
			errdefs.ErrFailedPrecondition, name, v1.OpPieces)
	}
	return nil
}

func (cn *conn) create(ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error) {
	shape := req.Shape
	if shape == nil {
		shape = []int64{}
	}
	if err := cn.mappable(req.Name); err != nil {
		return nil, err
	}
	info, commit, err := cn.srv.st.Create(ctx, store.CreateParams{Name: req.Name, DType: req.DType, Shape: shape, Device: req.Device,
		OwnerPID: cn.pid, Holder: cn.holder, Tenant: cn.id.Namespace, WriteBehind: true, Pieces: cn.pieces, Who: cn.who()})
	if err != nil {
		return nil, err
	}
	cn.commit = commit
	return cn.lease(req.Name, info, resp), nil
}

func (cn *conn) get(ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error) {
	if err := cn.mappable(req.Name); err != nil {
		return nil, err
	}
	info, commit, err := cn.srv.st.Get(ctx, store.GetParams{Name: req.Name, Holder: cn.holder, WriteBehind: true, WakeAfterAnswer: true})
	if err != nil {
		return nil, err
	}
	cn.commit = commit
	return cn.lease(req.Name, info, resp), nil
}

// reattach takes over the references a connection of a previous agent
// instance held (see store.Reattach): each name the client still has open,
// with its count. Names that cannot be taken over are answered in Lost.
func (cn *conn) reattach(ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error) {
	if req.Holder == "" {
		return nil, errdefs.Invalid("reattach needs the previous connection's holder")
	}
	for _, ref := range req.Refs {
		if ref.Count <= 0 {
			return nil, errdefs.Invalid("reattach of %q with count %d: want a positive count", ref.Name, ref.Count)
		}
	}
	resp.Tensors = make([]v1.Tensor, 0, len(req.Refs))
	for _, ref := range req.Refs {
		r := v1.Request{Op: v1.OpGet, Name: ref.Name}
		err := cn.scope(&r)
		if err == nil && cn.leases[r.Name] > 0 {
			// Named twice: this connection's one reference in Redis covers both.
			cn.leases[r.Name] += ref.Count
			resp.Tensors = append(resp.Tensors, *cn.infos[r.Name])
			continue
		}
		var info v1.Tensor
		if err == nil {
			info, err = cn.srv.st.Reattach(ctx, r.Name, req.Holder, cn.holder)
		}
		if err != nil {
			if errors.Is(err, errdefs.ErrInvalidArgument) {
				return nil, err
			}
			cn.srv.log.Info("a reference could not be reattached", "peer_pid", cn.pid, "name", ref.Name, "err", err)
			resp.Lost = append(resp.Lost, ref.Name)
			continue
		}
		cn.lease(r.Name, info, resp)
		cn.leases[r.Name] += ref.Count - 1
		resp.Tensor = nil
		resp.Tensors = append(resp.Tensors, info)
	}
	resp.FDs = nil // the client maps these already
	cn.srv.log.Info("client reattached", "peer_pid", cn.pid, "previous_holder", req.Holder, "tensors", len(resp.Tensors), "lost", len(resp.Lost))
	return nil, nil
}

// offer hands the store the descriptors of a previous instance's segments
// this client maps (vmm after a crash: the memory survives in them).
func (cn *conn) offer(ctx context.Context, req *v1.Request, _ *v1.Response) ([]int, error) {
	fds := cn.in
	if len(fds) != len(req.Segments) {
		return nil, errdefs.Invalid("offer of %d segments with %d descriptors", len(req.Segments), len(fds))
	}
	cn.in = nil
	check := cn.srv.auth != nil && cn.id.Namespace != ""
	var first error
	for i, id := range req.Segments {
		if err := cn.srv.st.Offer(ctx, id, fds[i], cn.id.Namespace, check); err != nil {
			cn.srv.log.Warn("an offered segment was not adopted", "peer_pid", cn.pid, "segment", id, "err", err)
			if first == nil {
				first = err
			}
			continue
		}
		if cn.sent == nil {
			cn.sent = map[string]bool{}
		}
		cn.sent[id] = true
	}
	return nil, first
}

// lease counts one more reference of this connection on name and answers
// with the record and, when the peer lacks it, the segment's descriptor.
func (cn *conn) lease(name string, info v1.Tensor, resp *v1.Response) []int {
	if cn.leases == nil {
		cn.leases, cn.infos = map[string]int64{}, map[string]*v1.Tensor{}
	}
	cn.leases[name]++
	cn.infos[name] = &info
	resp.Tensor = &info
	return cn.attach(resp, &info)
}

// warm answers, without a Redis round trip or a deadline, what the
// references this connection holds answer: a get, or a create of the same
// dtype and shape, of a tensor it holds, and a release (without an event)
// that leaves it holding one.
func (cn *conn) warm(req *v1.Request, resp *v1.Response) (fds []int, ok bool) {
	switch req.Op {
	case v1.OpGet, v1.OpCreate:
		info := cn.held(req)
		if info == nil {
			return nil, false
		}
		cn.leases[req.Name]++
		resp.Tensor = info
		return cn.attach(resp, info), true
	case v1.OpRelease:
		if req.Event != "" || cn.leases[req.Name] <= 1 {
			return nil, false
		}
		cn.leases[req.Name]--
		return nil, true
	}
	return nil, false
}

// held is the record of the live tensor a get or create names when this
// connection holds it (a create only when its dtype and shape match).
func (cn *conn) held(req *v1.Request) *v1.Tensor {
	info := cn.infos[req.Name]
	if info == nil || cn.leases[req.Name] == 0 || !cn.srv.st.Live(info.UID) {
		return nil
	}
	if req.Op == v1.OpCreate {
		dt, err := tensor.ParseDType(req.DType)
		shape := req.Shape
		if shape == nil {
			shape = []int64{}
		}
		if err != nil || dt != info.DType || tensor.FormatShape(shape) != tensor.FormatShape(info.Shape) {
			return nil // let the store give the precise error
		}
	}
	return info
}

// attach adds the descriptors of the tensor's segments this peer has not
// had (a tensor in pieces may lie in several).
func (cn *conn) attach(resp *v1.Response, info *v1.Tensor) []int {
	if len(info.Pieces) == 0 && cn.sent[info.SegmentID] {
		return nil
	}
	segs, ok := cn.srv.st.SegmentsOf(info.UID)
	if !ok {
		return nil
	}
	var fds []int
	for _, seg := range segs {
		if seg.FD() < 0 || cn.sent[seg.ID()] {
			continue
		}
		if cn.sent == nil {
			cn.sent = map[string]bool{}
		}
		cn.sent[seg.ID()] = true
		resp.FDs = append(resp.FDs, seg.ID())
		fds = append(fds, seg.FD())
	}
	return fds
}

func (cn *conn) release(ctx context.Context, req *v1.Request, _ *v1.Response) ([]int, error) {
	if cn.leases[req.Name] == 0 {
		if err := tensor.ValidateName(req.Name); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: this connection holds no reference on %q", errdefs.ErrFailedPrecondition, req.Name)
	}
	var fence store.Fence
	if req.Event != "" {
		f, err := cn.fence(req.Name, req.Event)
		if err != nil {
			return nil, err
		}
		fence = f
		cn.srv.log.Debug("release with an event", "name", req.Name, "done", f.Done())
	}
	if cn.leases[req.Name] > 1 {
		if fence != nil && !cn.srv.st.AttachFence(cn.infos[req.Name].UID, fence) {
			fence.Release()
		}
		cn.leases[req.Name]--
		return nil, nil
	}
	_, commit, err := cn.srv.st.ReleaseBehind(ctx, store.ReleaseParams{Name: req.Name, Holder: cn.holder, Count: registry.AllRefs, Fence: fence})
	if err != nil {
		return nil, err
	}
	cn.commit = commit
	delete(cn.leases, req.Name)
	delete(cn.infos, req.Name)
	return nil, nil
}

func (cn *conn) publish(ctx context.Context, req *v1.Request, _ *v1.Response) ([]int, error) {
	if cn.leases[req.Name] == 0 {
		return nil, fmt.Errorf("%w: publish needs a reference on %q held by this connection", errdefs.ErrFailedPrecondition, req.Name)
	}
	if _, err := decodeEvent(req.Event); err != nil {
		return nil, err
	}
	if err := cn.srv.st.Publish(ctx, req.Name, req.Event); err != nil {
		return nil, err
	}
	info := *cn.infos[req.Name] // answers already sent share the old one
	info.Event = req.Event
	cn.infos[req.Name] = &info
	return nil, nil
}

func (cn *conn) delete(ctx context.Context, req *v1.Request, _ *v1.Response) ([]int, error) {
	_, err := cn.srv.st.Delete(ctx, req.Name, "", cn.who())
	return nil, err
}

// who is this connection's peer for the audit log.
func (cn *conn) who() store.Who {
	w := store.Who{slog.String("via", "socket"), slog.Int("peer_pid", cn.pid), slog.Int("peer_uid", cn.uid)}
	if cn.id.Namespace != "" {
		w = append(w, slog.String("namespace", cn.id.Namespace), slog.String("pod", cn.id.Pod))
	}
	return w
}

func (cn *conn) stat(ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error) {
	info, err := cn.srv.st.Stat(ctx, req.Name)
	resp.Tensor = &info
	return nil, err
}

func (cn *conn) list(ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error) {
	if req.Limit < 0 || req.Limit > v1.MaxListLimit {
		return nil, errdefs.Invalid("list limit %d: want 1 to %d (0: all, if they fit in one answer)", req.Limit, v1.MaxListLimit)
	}
	list, next, err := cn.srv.st.List(ctx, req.Prefix, req.Cursor, req.Limit)
	if err != nil {
		return nil, err
	}
	// Filtered in place: the page is this answer's own copy, and a page
	// of a large registry is big enough that each copy costs collections.
	visible := list[:0]
	for _, t := range list {
		if cn.visible(ctx, t) {
			visible = append(visible, t)
		}
	}
	resp.Tensors = visible
	resp.Next = next
	return nil, nil
}

func (cn *conn) holders(ctx context.Context, req *v1.Request, resp *v1.Response) ([]int, error) {
	if err := tensor.ValidateName(req.Name); err != nil {
		return nil, err
	}
	if _, err := cn.srv.st.Stat(ctx, req.Name); err != nil {
		return nil, err
	}
	h, err := cn.srv.st.Holders(ctx, req.Name)
	resp.Holders = h
	return nil, err
}

func (cn *conn) stats(_ context.Context, _ *v1.Request, resp *v1.Response) ([]int, error) {
	st := cn.srv.st.Stats()
	resp.Stats = &st
	return nil, nil
}

func (cn *conn) gc(ctx context.Context, _ *v1.Request, resp *v1.Response) ([]int, error) {
	r, err := cn.srv.st.GC(ctx)
	resp.GC = &v1.GCResult{Holders: r.Holders, Freed: r.Freed}
	return nil, err
}

func (cn *conn) trim(_ context.Context, _ *v1.Request, resp *v1.Response) ([]int, error) {
	n, err := cn.srv.st.Trim()
	resp.Trimmed = n
	return nil, err
}

// forget: the peer closed its copy of a segment's descriptor (its memory
// can go once the agent releases the segment); send it again when needed.
func (cn *conn) forget(_ context.Context, req *v1.Request, _ *v1.Response) ([]int, error) {
	if req.Segment == "" {
		return nil, errdefs.Invalid("forget needs a segment id")
	}
	delete(cn.sent, req.Segment)
	return nil, nil
}
