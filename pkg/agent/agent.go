// Package agent wires the node agent together: backend, pools, registry,
// socket server, command-queue worker, GC, heartbeat, metrics and health.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/cuda"
	"github.com/memcuda/memcuda/internal/blockingnet"
	"github.com/memcuda/memcuda/internal/controller"
	"github.com/memcuda/memcuda/internal/nodecpu"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/backend/gpu"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/deviceplugin"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/handover"
	"github.com/memcuda/memcuda/pkg/metrics"
	"github.com/memcuda/memcuda/pkg/queue"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/server"
	"github.com/memcuda/memcuda/pkg/store"
)

// Config is everything the agent is told at start.
type Config struct {
	RedisURL    string
	RedisPrefix string
	// ClusterPrefix holds the set of every agent's prefix, so tools can
	// list all nodes of a shared Redis (memcuda ls --all-nodes).
	ClusterPrefix string
	Node          string
	Socket        string
	Backend       string // auto, vmm, legacy or host
	DeviceLimit   uint64
	MetricsAddr   string // "" disables the HTTP endpoint
	// Profiling serves /debug/pprof/ on the metrics endpoint (off: it shows
	// the agent's internals to whoever reaches the address).
	Profiling  bool
	GCInterval time.Duration
	ReplyTTL   time.Duration
	ZeroFill   bool
	// MaxPieces bounds the pieces one tensor may be assembled from
	// (store.WithMaxPieces).
	MaxPieces int
	Queue     bool // run the command-queue worker
	// RedisBlockingIO: Redis replies are awaited in poll(2) on the calling
	// thread rather than in Go's network poller (internal/blockingnet).
	RedisBlockingIO bool
	// RegistryWriteBehind: a socket create, or a connection's first get of a
	// tensor, is answered once the agent has decided it; its Redis script
	// runs right after, beside the connection's next requests (store.WithWriteBehind).
	RegistryWriteBehind bool
	// RegistryCoalesce: with write-behind, how long a connection's get
	// script waits for a release that cancels both (store.WithCoalesce).
	RegistryCoalesce time.Duration
	OpTimeout        time.Duration
	HeartbeatTTL     time.Duration
	// ReattachGrace is how long clients of a previous instance have to
	// reconnect and take their references (and, on vmm, their segments'
	// descriptors) over before what they held is dropped.
	ReattachGrace time.Duration
	// The socket's limits (server.WithMaxConnections and the others); zero
	// values keep the server's defaults.
	MaxConnections int
	ReadTimeout    time.Duration
	IdleTimeout    time.Duration
	HotConnections int
	// HotSpin and HotSpinners: server.WithHotSpin (HotSpin 0: off).
	HotSpin     time.Duration
	HotSpinners int
	// HotSpinMaxPressure and HotSpinIdleCPUs: server.WithHotSpinGate over
	// a nodecpu.Gate (HotSpinMaxPressure -1: polls whatever the node's load).
	HotSpinMaxPressure float64
	HotSpinIdleCPUs    float64

	// Kubernetes: the pod controller, the device plugin and per-namespace
	// access control. Off on bare metal.
	Kubernetes       bool
	AllowHostClients bool
	PluginDir        string
	ResourceName     string
	Slots            int
	ContainerSocket  string // where pods see the socket directory
	ExposeGPUs       string // NVIDIA_VISIBLE_DEVICES for pods with a slot ("" off; deviceplugin.Config)
}

// Agent is a running agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	rdb      *redis.Client
	st       *store.Store
	reg      *registry.Registry
	be       backend.Backend
	ready    atomic.Bool // registry reconciled and Redis reachable
	instance string
	live     *registry.Liveness // nil without write-behind
	handed   map[string]int     // segment descriptors a predecessor handed over, until Adopt takes them
	// A hand-over from a running predecessor (see takeOver): its instance,
	// its listening socket until Run takes it, and when it began.
	predecessor string
	inherited   *os.File
	takeStart   time.Time
	srv         *server.Server
	lock        *os.File    // the host backend's lock, handed over
	handedOver  atomic.Bool // this instance handed over to a successor
	stopWork    context.CancelFunc
	// Set by Run before bootstrap adopts anything.
	metrics *metrics.Metrics
	pods    *controller.PodReconciler
	runCtx  context.Context
}

// tensorLost reports a tensor whose memory did not survive: a metric, and
// an Event on each pod that held it.
func (a *Agent) tensorLost(rec v1.Tensor, holders map[string]int64, reason string) {
	if a.metrics != nil {
		a.metrics.TensorLost()
	}
	if a.pods != nil && len(holders) > 0 {
		go a.pods.TensorLost(a.runCtx, rec.Name, holders, reason)
	}
}

// New checks the config and builds the agent's parts; Run starts them.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %w", err)
	}
	// Never let the client retry on its own: a command whose reply was lost
	// may have been applied (a BLMOVE, a refcount script). The worker and the
	// request ids decide what to redo.
	opt.MaxRetries = -1
	opt.DialTimeout = 2 * time.Second
	if cfg.RedisBlockingIO {
		// Every socket request waits on a Redis script: block the serving
		// thread on the reply instead of parking in the network poller.
		opt.Dialer = blockingnet.Dialer(opt.DialTimeout, opt.TLSConfig)
	}
	if cfg.Node == "" {
		return nil, errors.New("node name is empty")
	}
	a := &Agent{cfg: cfg, log: log, rdb: redis.NewClient(opt), instance: store.NewInstanceID()}
	if cfg.Backend == "" {
		cfg.Backend = "auto"
	}
	mode, err := a.backendMode(cfg.Backend)
	if err != nil {
		return nil, err
	}
	// A GPU backend starts CUDA before the hand-over, while the predecessor
	// still serves (its start is most of a new instance's); the host backend
	// claims the shared-memory lock the hand-over passes, so it comes after.
	if mode != v1.ModeHost {
		if a.be, err = a.openBackend(mode); err != nil {
			return nil, err
		}
	}
	if err := a.takeOver(mode); err != nil {
		if a.be != nil {
			_ = a.be.Close()
		}
		return nil, err
	}
	if a.be == nil {
		if a.be, err = a.openBackend(mode); err != nil {
			return nil, err
		}
	}
	var regOpts []registry.Option
	if cfg.RegistryWriteBehind {
		// Answering before Redis must not hide a Redis that is gone: watch it.
		dial := blockingnet.Dialer(opt.DialTimeout, opt.TLSConfig)
		a.live = registry.NewLiveness(func(ctx context.Context) (net.Conn, error) { return dial(ctx, opt.Network, opt.Addr) })
		regOpts = append(regOpts, registry.WithLiveness(a.live))
	}
	a.reg = registry.New(a.rdb, registry.Keys{Prefix: cfg.RedisPrefix, Node: cfg.Node}, regOpts...)
	a.st = store.New(a.reg, a.be, a.instance, cfg.Node,
		store.WithLogger(log), store.WithDeviceLimit(cfg.DeviceLimit), store.WithZeroFill(cfg.ZeroFill), store.WithMaxPieces(cfg.MaxPieces),
		store.WithWriteBehind(cfg.RegistryWriteBehind), store.WithCoalesce(cfg.RegistryCoalesce), store.WithLost(a.tensorLost))
	return a, nil
}

// backendMode resolves --backend: auto is vmm when a GPU is visible, host
// otherwise.
func (a *Agent) backendMode(name string) (v1.IPCMode, error) {
	switch v1.IPCMode(name) {
	case "auto", "":
		if gpu.Available() {
			return v1.ModeVMM, nil
		}
		_, err := cuda.DeviceCount()
		a.log.Info("no GPU visible; using the host backend", "reason", err)
		return v1.ModeHost, nil
	case v1.ModeVMM, v1.ModeLegacy, v1.ModeHost:
		return v1.IPCMode(name), nil
	}
	return "", fmt.Errorf("--backend %q: want auto, vmm, legacy or host", name)
}

// openBackend opens the memory backend of mode.
func (a *Agent) openBackend(mode v1.IPCMode) (backend.Backend, error) {
	if mode != v1.ModeHost {
		return gpu.New(mode, a.instance)
	}
	hb := host.New(a.cfg.RedisPrefix, a.instance, host.WithLogger(a.log))
	var err error
	if a.lock != nil {
		err = hb.ClaimWith(a.lock)
	} else {
		err = hb.Claim()
	}
	if err != nil {
		return nil, err
	}
	return hb, nil
}

// takeOver asks a running agent of this socket to hand over to this one
// (see package handover). Nothing to do when no agent answers.
func (a *Agent) takeOver(mode v1.IPCMode) error {
	c, err := net.DialTimeout("unix", a.cfg.Socket, 200*time.Millisecond)
	if err != nil {
		return nil
	}
	c.Close()
	a.takeStart = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := handover.Take(ctx, a.cfg.Socket, handover.Request{Instance: a.instance, PID: os.Getpid(), Prefix: a.cfg.RedisPrefix,
		Mode: string(mode), Software: server.Software})
	if errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("another agent is listening on %s and takes no hand-over (%w): stop it first", a.cfg.Socket, err)
	}
	if err != nil {
		return fmt.Errorf("take over from the agent running on %s: %w", a.cfg.Socket, err)
	}
	a.predecessor, a.inherited, a.lock = st.Instance, st.Listener, st.Lock
	a.handed = map[string]int{}
	for id, f := range st.Segments {
		fd, err := unix.Dup(int(f.Fd()))
		f.Close()
		if err == nil {
			unix.CloseOnExec(fd)
			a.handed[id] = fd
		}
	}
	a.log.Info("the running agent handed over", "previous", st.Instance, "segments", len(st.Segments), "took", time.Since(a.takeStart))
	return nil
}

// serveHandOver takes hand-over requests of successors once this instance
// serves; done is closed after one took over.
func (a *Agent) serveHandOver(ctx context.Context, done chan<- struct{}) {
	l, err := handover.Listen(a.cfg.Socket)
	if err != nil {
		a.log.Warn("no hand-over socket: a new instance cannot take over without a gap", "path", handover.Path(a.cfg.Socket), "err", err)
		return
	}
	err = handover.Serve(ctx, l, a)
	if a.handedOver.Load() {
		if err != nil {
			// This instance stopped serving: the successor, or the next
			// start, adopts what it left, as after a crash.
			a.log.Error("the hand-over failed after this instance stopped serving", "err", err)
		}
		close(done)
	}
}

// HandOver implements handover.Giver: this instance stops serving (its
// connections closed without dropping references, the queue worker and
// housekeeping stopped) and hands its socket, lock and segment descriptors
// to the successor.
func (a *Agent) HandOver(ctx context.Context, req handover.Request) (*handover.State, error) {
	switch {
	case req.Prefix != a.cfg.RedisPrefix || req.Mode != string(a.be.Mode()):
		return nil, fmt.Errorf("this agent serves prefix %q with the %s backend, the new one %q with %s", a.cfg.RedisPrefix, a.be.Mode(), req.Prefix, req.Mode)
	case !a.ready.Load() || a.srv == nil:
		return nil, errors.New("this agent is still starting")
	case !a.handedOver.CompareAndSwap(false, true):
		return nil, errors.New("already handed over")
	}
	start := time.Now()
	a.log.Info("handing over to a new instance", "successor", req.Instance, "pid", req.PID, "software", req.Software)
	// Not ctx: the agent's context may end while connections finish.
	hctx, cancel := context.WithTimeout(context.Background(), a.cfg.OpTimeout+5*time.Second)
	defer cancel()
	ln, err := a.srv.HandOver(hctx)
	if err != nil {
		a.handedOver.Store(false)
		return nil, err
	}
	if a.stopWork != nil {
		a.stopWork()
	}
	if err := a.st.FlushBehind(hctx); err != nil {
		a.log.Warn("references still in their coalescing window may be missing from Redis", "err", err)
	}
	st := &handover.State{Instance: a.instance, Listener: ln, Segments: map[string]*os.File{}}
	if hb, ok := a.be.(*host.Backend); ok && hb.Lock() != nil {
		if fd, err := unix.Dup(int(hb.Lock().Fd())); err == nil {
			st.Lock = os.NewFile(uintptr(fd), "lock")
		}
	}
	for id, fd := range a.st.SegmentFDs() {
		if dup, err := unix.Dup(fd); err == nil {
			st.Segments[id] = os.NewFile(uintptr(dup), id)
		}
	}
	a.log.Info("stopped serving for the successor", "successor", req.Instance, "segments", len(st.Segments), "took", time.Since(start))
	return st, nil
}

// stopHandedOver ends this instance after a hand-over: its records,
// memory and heartbeat are the successor's now, so nothing is removed or
// released here (the process's exit unmaps what it still maps).
func (a *Agent) stopHandedOver() {
	a.st.StopWrites()
	if a.live != nil {
		a.live.Close()
	}
	a.rdb.Close()
	a.log.Info("agent stopped after handing over")
}

// Run serves until ctx ends, then shuts down in order: stop taking work,
// close connections (their references dropped), release memory here
// (records stay for the next instance). After handing over to a successor
// it stops without touching anything the successor now serves; with
// --kubernetes it then waits for ctx (the pod's SIGTERM): a container that
// exits would be restarted.
func (a *Agent) Run(parent context.Context) error {
	ctx, stop := context.WithCancel(parent)
	defer stop()
	ln, err := a.listen()
	if err != nil {
		return err
	}
	a.log.Info("agent starting", "instance", a.instance, "node", a.cfg.Node, "socket", a.cfg.Socket,
		"backend", a.be.Mode(), "prefix", a.cfg.RedisPrefix, "devices", len(a.be.Devices()), "taking_over_from", a.predecessor)

	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(promReg, a.st, func(ctx context.Context) (int64, error) {
		return a.rdb.LLen(ctx, a.reg.Keys().Cmd()).Result()
	})
	a.metrics, a.runCtx = m, ctx

	var wg sync.WaitGroup
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	srvOpts := []server.Option{server.WithLogger(a.log), server.WithObserver(m), server.WithOpTimeout(a.cfg.OpTimeout),
		server.WithIdleTimeout(a.cfg.IdleTimeout)}
	if a.cfg.MaxConnections > 0 {
		srvOpts = append(srvOpts, server.WithMaxConnections(a.cfg.MaxConnections))
	}
	if a.cfg.ReadTimeout > 0 {
		srvOpts = append(srvOpts, server.WithReadTimeout(a.cfg.ReadTimeout))
	}
	if a.cfg.HotConnections > 0 {
		srvOpts = append(srvOpts, server.WithHotConnections(a.cfg.HotConnections))
	}
	var spinGate metrics.NodeCPUSource // nil: polls whatever the node's load
	if a.cfg.HotSpin > 0 {
		srvOpts = append(srvOpts, server.WithHotSpin(a.cfg.HotSpin, a.cfg.HotSpinners))
		if a.cfg.HotSpinMaxPressure >= 0 {
			g, err := nodecpu.NewGate(a.cfg.HotSpinners, a.cfg.HotSpinMaxPressure, a.cfg.HotSpinIdleCPUs)
			if err != nil {
				ln.Close()
				return fmt.Errorf("--hot-spin: %w", err)
			}
			spinGate = g
			srvOpts = append(srvOpts, server.WithHotSpinGate(g))
		}
	}
	if a.cfg.Kubernetes {
		opts, err := a.startKubernetes(ctx, run)
		if err != nil {
			ln.Close()
			return err
		}
		srvOpts = append(srvOpts, opts...)
	}
	a.srv = server.New(a.st, srvOpts...)
	if a.cfg.HotSpin > 0 {
		metrics.RegisterHotSpins(promReg, a.srv, spinGate)
	}
	serveErr := make(chan error, 1)
	serve := func() { run(func() { serveErr <- a.srv.Serve(ctx, ln) }) }
	if a.predecessor != "" {
		// Taking over: clients reconnect to the inherited socket and wait in
		// its queue until the predecessor's tensors are adopted.
		if err := a.bootstrap(ctx); err != nil {
			ln.Close()
			return err
		}
		a.log.Info("took over from the previous instance", "previous", a.predecessor, "took", time.Since(a.takeStart))
	}
	serve()
	var httpSrv *http.Server
	if a.cfg.MetricsAddr != "" {
		httpSrv = a.httpServer(promReg)
		run(func() {
			if err := httpSrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics endpoint failed", "addr", a.cfg.MetricsAddr, "err", err)
			}
		})
	}
	// Everything that needs Redis waits for it: the socket already answers
	// (with unavailable) while Redis is down.
	fatal := make(chan error, 1)
	handedOver := make(chan struct{})
	// The queue worker and housekeeping stop when a successor takes over.
	work, stopWork := context.WithCancel(ctx)
	defer stopWork()
	a.stopWork = stopWork
	run(func() {
		if a.predecessor == "" {
			if err := a.bootstrap(ctx); err != nil {
				fatal <- err
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		if a.cfg.Queue {
			w := queue.NewWorker(a.st, a.rdb, a.reg.Keys(), queue.WithLogger(a.log), queue.WithObserver(m), queue.WithReplyTTL(a.cfg.ReplyTTL))
			run(func() { w.Run(work) })
		}
		run(func() { a.background(work) })
		run(func() { a.endGrace(work) })
		run(func() { a.st.RunReaper(work, 2*time.Millisecond) })
		run(func() { a.serveHandOver(ctx, handedOver) })
	})

	var result error
	select {
	case <-ctx.Done():
	case <-handedOver:
		stop()
	case err := <-serveErr:
		if a.handedOver.Load() {
			<-handedOver // the server stopped for the successor
			stop()
			break
		}
		result = fmt.Errorf("socket server stopped: %w", err)
	case err := <-fatal:
		result = err
		stop()
	}
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		httpSrv.Shutdown(sctx)
		cancel()
	}
	if a.handedOver.Load() {
		stop()
		wg.Wait()
		a.stopHandedOver()
		if a.cfg.Kubernetes {
			a.log.Info("handed over; waiting for SIGTERM (the pod is being replaced)")
			<-parent.Done()
		}
		return nil
	}
	a.log.Info("agent shutting down")
	wg.Wait()
	a.shutdown()
	return result
}

// listen opens the client socket, or takes the predecessor's.
func (a *Agent) listen() (*net.UnixListener, error) {
	if a.inherited == nil {
		ln, err := server.Listen(a.cfg.Socket)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
		}
		return ln, nil
	}
	f := a.inherited
	a.inherited = nil
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("the predecessor's socket: %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("the predecessor's socket is a %T, not a Unix socket", l)
	}
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// startKubernetes starts the pod controller's manager and the device
// plugin, and returns the server options for per-namespace access.
func (a *Agent) startKubernetes(ctx context.Context, run func(func())) ([]server.Option, error) {
	cfg, err := ctrlconfig.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	ctrllog.SetLogger(logr.FromSlogHandler(a.log.Handler()))
	mgr, rec, err := controller.NewManager(cfg, a.st, controller.Options{Node: a.cfg.Node})
	if err != nil {
		return nil, err
	}
	a.pods = rec
	run(func() {
		if err := mgr.Start(ctx); err != nil {
			a.log.Error("pod controller stopped", "err", err)
		}
	})
	plugin, err := deviceplugin.New(deviceplugin.Config{
		ResourceName: a.cfg.ResourceName, Slots: a.cfg.Slots, PluginDir: a.cfg.PluginDir, SocketName: "memcuda-" + a.instance + ".sock",
		HostSocket: a.cfg.Socket, Container: a.cfg.ContainerSocket,
		Env:        map[string]string{"MEMCUDA_NODE_NAME": a.cfg.Node, "MEMCUDA_REDIS_PREFIX": a.cfg.RedisPrefix},
		ExposeGPUs: a.cfg.ExposeGPUs,
	}, a.log)
	if err != nil {
		return nil, err
	}
	run(func() { plugin.Run(ctx) })
	return []server.Option{server.WithAuthorizer(controller.Authorizer{R: rec}, a.cfg.AllowHostClients)}, nil
}

// bootstrap waits for Redis, checks that no live agent's prefix overlaps
// this one's, loads the scripts and reconciles the registry. An overlap is
// returned (the agent stops); it returns nil when ctx ends first.
func (a *Agent) bootstrap(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for {
		err := a.checkPrefix(ctx)
		if errors.Is(err, errdefs.ErrFailedPrecondition) {
			a.log.Error("refusing to start", "err", err)
			return err
		}
		if err == nil {
			err = a.reg.Load(ctx)
		}
		if err == nil {
			var rep store.AdoptReport
			rep, err = a.st.Adopt(ctx, a.handed)
			a.handed = nil // Adopt owns them now
			if err == nil {
				err = a.reg.MarkEpoch(ctx, a.instance)
			}
			if err == nil {
				a.log.Info("registry reconciled", "adopted", rep.Adopted, "awaiting_descriptors", rep.Awaiting,
					"orphaned", rep.Orphaned, "removed", rep.Removed, "reattach_grace", a.cfg.ReattachGrace)
				a.removeStaleSegments()
				a.heartbeat(ctx)
				a.ready.Store(true)
				return nil
			}
		}
		a.log.Warn("waiting for Redis", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// removeStaleSegments unlinks the host backend's objects of earlier
// instances that no adopted record names.
func (a *Agent) removeStaleSegments() {
	hb, ok := a.be.(*host.Backend)
	if !ok {
		return
	}
	keep := a.st.SegmentIDs()
	removed, err := hb.RemoveStale(func(id string) bool { return keep[id] })
	if err != nil {
		a.log.Warn("could not remove stale shared-memory objects", "err", err)
	}
	if len(removed) > 0 {
		a.log.Info("removed shared-memory objects no record names", "count", len(removed))
	}
}

// endGrace waits out the reattach grace, then drops what predecessors'
// clients did not come back for.
func (a *Agent) endGrace(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(a.cfg.ReattachGrace):
	}
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := a.st.EndGrace(ctx)
		if err == nil {
			return
		}
		a.log.Warn("ending the reattach grace", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// checkPrefix refuses a prefix whose keys collide with a live agent's in
// the same Redis: with "p:" and "p:meta:" the record p:meta:meta:x would be
// the first agent's tensor "meta:x" and the second's "x". Agents list their
// prefixes in the cluster prefix's set; one is live while its heartbeat key
// is there (KEYS runs only when a colliding prefix is listed).
func (a *Agent) checkPrefix(ctx context.Context) error {
	mine := a.cfg.RedisPrefix
	if mine == "" {
		return fmt.Errorf("%w: --redis-prefix is empty", errdefs.ErrFailedPrecondition)
	}
	if a.cfg.ClusterPrefix == "" {
		return nil
	}
	others, err := a.rdb.SMembers(ctx, registry.PrefixesKey(a.cfg.ClusterPrefix)).Result()
	if err != nil {
		return registry.Wrap(err)
	}
	for _, other := range others {
		if other == mine || !registry.PrefixesCollide(mine, other) {
			continue
		}
		live, err := a.rdb.Keys(ctx, escapeGlob(other)+"agent:*").Result()
		if err != nil {
			return registry.Wrap(err)
		}
		if len(live) > 0 {
			return fmt.Errorf("%w: --redis-prefix %q collides with %q, the prefix of the live agent %s in this Redis: "+
				"their keys overlap (give each node its own, such as tensor:<node>:)", errdefs.ErrFailedPrecondition, mine, other, live[0])
		}
	}
	return nil
}

// escapeGlob quotes Redis glob characters.
func escapeGlob(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`).Replace(s)
}

// background runs GC and the heartbeat.
func (a *Agent) background(ctx context.Context) {
	gc := time.NewTicker(a.cfg.GCInterval)
	defer gc.Stop()
	hb := time.NewTicker(a.cfg.HeartbeatTTL / 3)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-gc.C:
			a.checkRedisData(ctx)
			if res, err := a.st.GC(ctx); err != nil {
				a.log.Warn("gc pass failed", "err", err)
			} else if res.Holders > 0 {
				a.log.Info("gc pass", "dead_holders", res.Holders, "freed", len(res.Freed))
			}
		case <-hb.C:
			a.heartbeat(ctx)
		}
	}
}

// checkRedisData writes back the records this agent holds memory for when
// Redis came back without its data (a restart without persistence):
// otherwise their names would answer not found while their memory stays.
func (a *Agent) checkRedisData(ctx context.Context) {
	lost, err := a.reg.EpochLost(ctx)
	if err != nil || !lost {
		return
	}
	n, err := a.st.WriteBack(ctx)
	if err != nil {
		a.log.Warn("Redis lost its data; writing the records back failed, retrying", "written", n, "err", err)
		return
	}
	if err := a.reg.MarkEpoch(ctx, a.instance); err != nil {
		return
	}
	a.log.Warn("Redis came back without its data (restarted without persistence?): wrote back the records of the memory this agent holds",
		"tensors", n)
	a.heartbeat(ctx)
}

// heartbeat records this agent in Redis, so `memcuda ls --all-nodes` and
// operators see who serves which node.
func (a *Agent) heartbeat(ctx context.Context) {
	k := a.reg.Keys()
	_, err := a.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k.Agent(), "instance", a.instance, "pid", os.Getpid(), "node", a.cfg.Node,
			"mode", string(a.be.Mode()), "socket", a.cfg.Socket, "beat", time.Now().UnixMilli(), "software", server.Software)
		p.Expire(ctx, k.Agent(), a.cfg.HeartbeatTTL)
		p.SAdd(ctx, k.Agents(), a.cfg.Node)
		if a.cfg.ClusterPrefix != "" {
			p.SAdd(ctx, registry.PrefixesKey(a.cfg.ClusterPrefix), a.cfg.RedisPrefix)
		}
		return nil
	})
	a.ready.Store(err == nil)
	if err != nil {
		a.log.Warn("heartbeat failed", "err", err)
	}
}

// shutdown stops serving and gives the memory up here. Records stay in
// Redis: the next instance adopts what survived (the host backend's shared
// memory is kept for it; vmm memory lives on in the processes that map it;
// legacy memory only for the processes that opened it).
func (a *Agent) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.st.FlushBehind(ctx); err != nil {
		a.log.Warn("references still in their coalescing window may be missing from Redis", "err", err)
	}
	a.st.StopWrites()
	if a.live != nil {
		a.live.Close()
	}
	a.rdb.Del(ctx, a.reg.Keys().Agent())
	if k, ok := a.be.(backend.Keeper); ok {
		k.Keep()
	}
	if err := a.st.Close(); err != nil {
		a.log.Warn("releasing memory", "err", err)
	}
	if err := a.be.Close(); err != nil {
		a.log.Warn("closing the backend", "err", err)
	}
	a.rdb.Close()
	a.log.Info("agent stopped; its tensors' records stay for the next instance", "tensors", a.st.Stats().Tensors)
}

func (a *Agent) httpServer(reg *prometheus.Registry) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if a.cfg.Profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	}
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if !a.ready.Load() || a.reg.Ping(ctx) != nil {
			http.Error(w, "redis unavailable or registry not reconciled", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return &http.Server{Addr: a.cfg.MetricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
