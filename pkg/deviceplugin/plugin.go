// Package deviceplugin is the agent's kubelet device plugin (API v1beta1):
// it advertises an extended resource (memcuda.io/tensors) with a fixed number
// of slots per node, and Allocate mounts the agent's socket directory into
// the container and sets the clients' environment. Allocate never looks at
// tensor names: a failed Allocate would fail the pod for good.
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Config describes what the plugin advertises and injects.
type Config struct {
	ResourceName string            // e.g. memcuda.io/tensors
	Slots        int               // devices advertised (pods that may hold one at once)
	PluginDir    string            // kubelet's device-plugins directory
	SocketName   string            // our socket's file name in PluginDir
	HostSocket   string            // the agent's socket path on the host
	Container    string            // where the socket directory is mounted in containers
	Env          map[string]string // extra environment for containers (node name...)
	// ExposeGPUs, when set, is the NVIDIA_VISIBLE_DEVICES every container
	// with a slot gets ("all", or GPU UUIDs or indices, comma-separated):
	// the NVIDIA container runtime then mounts those GPUs, so a pod sees
	// the GPU that holds its tensors without asking for nvidia.com/gpu.
	// Those GPUs are not accounted to the pod by the scheduler.
	ExposeGPUs string
}

// Plugin serves the DevicePlugin service and keeps itself registered.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	cfg     Config
	log     *slog.Logger
	devices []*pluginapi.Device
	stop    chan struct{}
	mu      sync.Mutex
	srv     *grpc.Server
	regs    int // registrations done (for tests and logs)
}

// New checks cfg and returns a plugin.
func New(cfg Config, log *slog.Logger) (*Plugin, error) {
	if cfg.ResourceName == "" || cfg.Slots <= 0 || cfg.PluginDir == "" || cfg.HostSocket == "" {
		return nil, errors.New("device plugin: resource name, slots > 0, plugin dir and host socket are required")
	}
	if cfg.SocketName == "" {
		cfg.SocketName = "memcuda.sock"
	}
	if cfg.Container == "" {
		cfg.Container = "/run/memcuda"
	}
	p := &Plugin{cfg: cfg, log: log.With("component", "device-plugin"), stop: make(chan struct{})}
	for i := 0; i < cfg.Slots; i++ {
		p.devices = append(p.devices, &pluginapi.Device{ID: fmt.Sprintf("tensors-%d", i), Health: pluginapi.Healthy})
	}
	return p, nil
}

func (p *Plugin) socketPath() string { return filepath.Join(p.cfg.PluginDir, p.cfg.SocketName) }
func (p *Plugin) kubeletPath() string {
	return filepath.Join(p.cfg.PluginDir, filepath.Base(pluginapi.KubeletSocket))
}

// Registrations is how many times the plugin registered with the kubelet.
func (p *Plugin) Registrations() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.regs
}

// Run serves and registers, and serves and registers again whenever the
// kubelet restarts (its socket is recreated, or ours is removed, as the
// kubelet does when it starts), until ctx ends.
func (p *Plugin) Run(ctx context.Context) error {
	defer close(p.stop)
	for {
		if err := p.start(ctx); err != nil {
			p.log.Warn("device plugin not registered; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(2 * time.Second):
			}
			continue
		}
		restart := p.watch(ctx)
		p.shutdown()
		if !restart {
			return nil
		}
		p.log.Info("kubelet restarted; registering again")
	}
}

func (p *Plugin) start(ctx context.Context) error {
	if err := os.Remove(p.socketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	p.removeStale()
	l, err := net.Listen("unix", p.socketPath())
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go srv.Serve(l)
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
	if err := p.register(ctx); err != nil {
		p.shutdown()
		return err
	}
	return nil
}

func (p *Plugin) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+p.kubeletPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     p.cfg.SocketName,
		ResourceName: p.cfg.ResourceName,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	if err != nil {
		return fmt.Errorf("register with the kubelet at %s: %w", p.kubeletPath(), err)
	}
	p.mu.Lock()
	p.regs++
	p.mu.Unlock()
	p.log.Info("registered with the kubelet", "resource", p.cfg.ResourceName, "slots", p.cfg.Slots)
	return nil
}

// removeStale removes the sockets earlier agent instances left (each
// instance has its own, so that a successor's registration and a
// predecessor's stop never touch each other's): those nobody answers on.
func (p *Plugin) removeStale() {
	m, _ := filepath.Glob(filepath.Join(p.cfg.PluginDir, "memcuda*.sock"))
	for _, path := range m {
		if path == p.socketPath() {
			continue
		}
		if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
			c.Close()
			continue
		}
		os.Remove(path)
	}
}

// watch returns true when the plugin must register again, false when ctx ended.
func (p *Plugin) watch(ctx context.Context) bool {
	inode := func(path string) uint64 {
		st, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return statIno(st)
	}
	kubelet := inode(p.kubeletPath())
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			if _, err := os.Stat(p.socketPath()); err != nil {
				return true
			}
			if k := inode(p.kubeletPath()); k != 0 && k != kubelet {
				return true
			}
		}
	}
}

func (p *Plugin) shutdown() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// GetDevicePluginOptions implements the DevicePlugin service.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the slots once and keeps the stream open: they never change.
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, s grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	select {
	case <-s.Context().Done():
	case <-p.stop:
	}
	return nil
}

// Allocate mounts the agent's socket directory and sets the environment.
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	sockName := filepath.Base(p.cfg.HostSocket)
	for range req.ContainerRequests {
		env := map[string]string{"MEMCUDA_SOCKET": filepath.Join(p.cfg.Container, sockName)}
		for k, v := range p.cfg.Env {
			env[k] = v
		}
		if p.cfg.ExposeGPUs != "" {
			env["NVIDIA_VISIBLE_DEVICES"] = p.cfg.ExposeGPUs
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: env,
			Mounts: []*pluginapi.Mount{{
				ContainerPath: p.cfg.Container,
				HostPath:      filepath.Dir(p.cfg.HostSocket),
			}},
		})
	}
	return resp, nil
}

// GetPreferredAllocation implements the DevicePlugin service: any slots do.
func (p *Plugin) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, c := range req.ContainerRequests {
		ids := append([]string{}, c.MustIncludeDeviceIDs...)
		for _, id := range c.AvailableDeviceIDs {
			if len(ids) >= int(c.AllocationSize) {
				break
			}
			ids = append(ids, id)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// PreStartContainer implements the DevicePlugin service (not requested).
func (p *Plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
