// Command memcuda-agent is mem-cuda's per-node agent: it owns the memory
// pools, keeps the registry in Redis, serves the client socket and the
// command queue. Every flag has an environment twin (MEMCUDA_<FLAG>).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	k8sapi "github.com/memcuda/memcuda/api/k8s/v1alpha1"
	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/flagenv"
	"github.com/memcuda/memcuda/pkg/agent"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/registry"
)

// Version is set at build time (-X main.Version=...).
var Version = "dev"

func main() {
	err := run(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "memcuda-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("memcuda-agent", flag.ContinueOnError)
	hostname, _ := os.Hostname()
	if n := os.Getenv("NODE_NAME"); n != "" {
		hostname = n
	}
	var cfg agent.Config
	var limit flagenv.Bytes
	var logFormat, logLevel string
	var version bool
	fs.StringVar(&cfg.RedisURL, "redis-url", "redis://127.0.0.1:6379/0", "Redis URL; password and TLS (rediss://) go in the URL")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", registry.DefaultPrefix, "prefix of every Redis key; must differ between agents sharing a Redis")
	fs.StringVar(&cfg.ClusterPrefix, "cluster-prefix", registry.DefaultPrefix, "prefix of the set listing every agent's --redis-prefix (memcuda ls --all-nodes)")
	fs.StringVar(&cfg.Node, "node", hostname, "node name (default: $NODE_NAME, else the hostname)")
	fs.StringVar(&cfg.Socket, "socket", client.DefaultSocket, "client socket path")
	fs.StringVar(&cfg.Backend, "backend", "auto", "memory backend: auto (vmm with a GPU, else host), vmm, legacy or host")
	fs.Var(&limit, "device-limit", "bytes the pools may reserve per device, a Kubernetes quantity such as 40Gi (0: the device's size)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9464", "address of /metrics, /healthz and /readyz (empty: off)")
	fs.BoolVar(&cfg.Profiling, "pprof", false, "also serve Go's profiles at /debug/pprof/ on --metrics-addr (for debugging; keep the address private)")
	fs.DurationVar(&cfg.GCInterval, "gc-interval", time.Second, "how often references of dead processes are dropped")
	fs.DurationVar(&cfg.ReattachGrace, "reattach-grace", 30*time.Second, "how long clients of a previous agent instance have to reconnect and take back their references (and vmm segments) before they are dropped")
	fs.DurationVar(&cfg.ReplyTTL, "reply-ttl", time.Minute, "how long queue replies are kept")
	fs.DurationVar(&cfg.OpTimeout, "op-timeout", 10*time.Second, "time limit of one operation")
	fs.IntVar(&cfg.MaxConnections, "max-connections", 16384, "most socket connections at once; one past it is answered unavailable (each takes a file descriptor: keep it under the process's limit)")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", 10*time.Second, "time from a request's first byte to its last; a slower client is disconnected")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "close connections that hold no tensor and sent nothing for this long (0: never; connections holding tensors are leases and stay)")
	fs.IntVar(&cfg.HotConnections, "hot-connections", 512, "connections that wait for their next request on a thread of their own (the fastest wake-up); the rest wait together on one")
	fs.DurationVar(&cfg.HotSpin, "hot-spin", 0, "how long a hot connection polls for its next request before it blocks: a request within it is answered without waking a thread, for up to this much of a CPU after each request (0: off)")
	fs.IntVar(&cfg.HotSpinners, "hot-spinners", -1, "most connections polling at once with --hot-spin, so most CPUs it takes (-1: one per 8 CPUs the agent may use, none under 8)")
	fs.Float64Var(&cfg.HotSpinMaxPressure, "hot-spin-max-pressure", 0.3, "with --hot-spin: polls stop once some task of the node waited for a CPU this share of the time (/proc/pressure/cpu, read every 100ms) and start again below two thirds of it (-1: poll whatever the node's load)")
	fs.Float64Var(&cfg.HotSpinIdleCPUs, "hot-spin-idle-cpus", 2, "with --hot-spin, on a kernel without /proc/pressure/cpu: CPUs of the node that must stay idle beside the polls (read from /proc/stat every 100ms); polls start when every spinner could poll with this many still idle and stop when fewer are")
	fs.BoolVar(&cfg.ZeroFill, "zero-fill", true, "zero new tensors (a reused block never shows old data)")
	fs.IntVar(&cfg.MaxPieces, "max-pieces", v1.MaxPieces, "most pieces of free memory one tensor may be assembled from instead of a new segment, for clients that map pieces (host backend only: a GPU maps whole allocations; 1: off)")
	fs.BoolVar(&cfg.Queue, "queue", true, "serve the Redis command queue")
	fs.BoolVar(&cfg.RegistryWriteBehind, "registry-write-behind", true, "answer a socket create, or a connection's first get of a tensor, before its Redis script runs (right after; later requests on the name wait for it)")
	fs.DurationVar(&cfg.RegistryCoalesce, "registry-coalesce", time.Millisecond, "with --registry-write-behind: how long a connection's get waits before its Redis script runs; released within it, neither the get nor the release reaches Redis (Redis sees connections' references up to this late; 0: at once)")
	fs.BoolVar(&cfg.RedisBlockingIO, "redis-blocking-io", true, "wait for Redis replies in poll(2) on the request's thread, not in Go's network poller (false: the poller)")
	fs.BoolVar(&cfg.Kubernetes, "kubernetes", false, "run the pod controller, the device plugin and per-namespace access control (in a DaemonSet)")
	fs.BoolVar(&cfg.AllowHostClients, "allow-host-clients", true, "with --kubernetes: let processes outside any pod use the socket")
	fs.StringVar(&cfg.PluginDir, "device-plugin-dir", "/var/lib/kubelet/device-plugins", "kubelet's device-plugin directory")
	fs.StringVar(&cfg.ResourceName, "resource-name", k8sapi.ResourceName, "extended resource the device plugin advertises")
	fs.IntVar(&cfg.Slots, "slots", 128, "how many pods of the node may request the resource at once")
	fs.StringVar(&cfg.ExposeGPUs, "expose-gpus", "", `with --kubernetes: NVIDIA_VISIBLE_DEVICES for every pod with a slot ("all", or GPU UUIDs or indices), so pods see the GPUs holding their tensors; those GPUs are not accounted by the scheduler ("" off)`)
	fs.StringVar(&cfg.ContainerSocket, "container-socket-dir", "/run/memcuda", "where pods see the socket's directory")
	fs.StringVar(&logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	flagenv.Document(fs)
	fs.BoolVar(&version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if version {
		fmt.Println("memcuda-agent", Version)
		return nil
	}
	if err := flagenv.Apply(fs); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.DeviceLimit = uint64(limit)
	cfg.HeartbeatTTL = 30 * time.Second
	if cfg.GCInterval <= 0 {
		return fmt.Errorf("--gc-interval must be positive")
	}
	if cfg.ReattachGrace < 0 {
		return fmt.Errorf("--reattach-grace must not be negative")
	}
	if cfg.MaxConnections <= 0 || cfg.HotConnections <= 0 || cfg.ReadTimeout <= 0 || cfg.IdleTimeout < 0 {
		return fmt.Errorf("--max-connections, --hot-connections and --read-timeout must be positive, --idle-timeout not negative")
	}
	if cfg.HotSpin < 0 || cfg.HotSpinners < -1 {
		return fmt.Errorf("--hot-spin must not be negative, --hot-spinners not under -1")
	}
	if (cfg.HotSpinMaxPressure <= 0 || cfg.HotSpinMaxPressure > 1) && cfg.HotSpinMaxPressure != -1 {
		return fmt.Errorf("--hot-spin-max-pressure must be over 0 and at most 1, or -1 to poll whatever the node's load")
	}
	if cfg.HotSpinIdleCPUs < 0 {
		return fmt.Errorf("--hot-spin-idle-cpus must not be negative")
	}
	if cfg.HotSpinners == -1 {
		cfg.HotSpinners = runtime.GOMAXPROCS(0) / 8
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	switch logFormat {
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, hopts))
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, hopts))
	default:
		return fmt.Errorf("--log-format %q: want json or text", logFormat)
	}
	slog.SetDefault(log)
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}
