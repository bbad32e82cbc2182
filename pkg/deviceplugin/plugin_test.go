package deviceplugin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// stubKubelet is a real gRPC Registration server on kubelet.sock that, like
// the kubelet, dials the plugin back after it registers.
type stubKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	dir  string
	srv  *grpc.Server
	mu   sync.Mutex
	reqs []*pluginapi.RegisterRequest
	got  chan *pluginapi.RegisterRequest
}

func startKubelet(t *testing.T, dir string) *stubKubelet {
	t.Helper()
	k := &stubKubelet{dir: dir, got: make(chan *pluginapi.RegisterRequest, 4)}
	path := filepath.Join(dir, "kubelet.sock")
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	k.srv = grpc.NewServer()
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go k.srv.Serve(l)
	t.Cleanup(k.srv.Stop)
	return k
}

func (k *stubKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.mu.Lock()
	k.reqs = append(k.reqs, r)
	k.mu.Unlock()
	k.got <- r
	return &pluginapi.Empty{}, nil
}

func (k *stubKubelet) waitRegister(t *testing.T) *pluginapi.RegisterRequest {
	t.Helper()
	select {
	case r := <-k.got:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin did not register")
		return nil
	}
}

// dialPlugin connects to the endpoint the plugin registered, as the kubelet does.
func (k *stubKubelet) dialPlugin(t *testing.T, endpoint string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

// runPlugin starts a plugin in dir and stops it when the test ends.
func runPlugin(t *testing.T, cfg Config) *Plugin {
	t.Helper()
	p, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func TestRegisterListAndWatchAllocate(t *testing.T) {
	dir := t.TempDir()
	k := startKubelet(t, dir)
	runPlugin(t, Config{
		ResourceName: "memcuda.io/tensors", Slots: 5, PluginDir: dir, HostSocket: "/run/memcuda/agent.sock",
		Env: map[string]string{"MEMCUDA_NODE_NAME": "node-1"},
	})
	ctx := context.Background()

	reg := k.waitRegister(t)
	if reg.Version != pluginapi.Version || reg.ResourceName != "memcuda.io/tensors" || reg.Endpoint != "memcuda.sock" {
		t.Fatalf("register request %+v", reg)
	}
	c := k.dialPlugin(t, reg.Endpoint)
	stream, err := c.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	lw, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(lw.Devices) != 5 || lw.Devices[0].Health != pluginapi.Healthy {
		t.Fatalf("devices %v", lw.Devices)
	}
	resp, err := c.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"tensors-0"}}, {DevicesIds: []string{"tensors-1", "tensors-2"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.ContainerResponses) != 2 {
		t.Fatalf("%d container responses", len(resp.ContainerResponses))
	}
	for _, cr := range resp.ContainerResponses {
		if cr.Envs["MEMCUDA_SOCKET"] != "/run/memcuda/agent.sock" || cr.Envs["MEMCUDA_NODE_NAME"] != "node-1" {
			t.Fatalf("envs %v", cr.Envs)
		}
		if _, ok := cr.Envs["NVIDIA_VISIBLE_DEVICES"]; ok {
			t.Fatalf("GPUs exposed without --expose-gpus: %v", cr.Envs)
		}
		if len(cr.Mounts) != 1 || cr.Mounts[0].HostPath != "/run/memcuda" || cr.Mounts[0].ContainerPath != "/run/memcuda" || cr.Mounts[0].ReadOnly {
			t.Fatalf("mounts %v", cr.Mounts)
		}
	}
	pref, err := c.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: []string{"tensors-3", "tensors-4"}, MustIncludeDeviceIDs: []string{"tensors-1"}, AllocationSize: 2},
	}})
	if err != nil || len(pref.ContainerResponses[0].DeviceIDs) != 2 || pref.ContainerResponses[0].DeviceIDs[0] != "tensors-1" {
		t.Fatalf("preferred allocation %v %v", pref, err)
	}
}

// With ExposeGPUs, every container with a slot sees those GPUs (the NVIDIA
// runtime reads NVIDIA_VISIBLE_DEVICES), so a reader pod sees the GPU its
// tensor lives on.
func TestAllocateExposesGPUsWhenAsked(t *testing.T) {
	p, err := New(Config{ResourceName: "memcuda.io/tensors", Slots: 2, PluginDir: t.TempDir(), HostSocket: "/run/memcuda/agent.sock",
		ExposeGPUs: "GPU-0b1c,GPU-9f2e"}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"tensors-0"}}, {DevicesIds: []string{"tensors-1"}},
	}})
	if err != nil || len(resp.ContainerResponses) != 2 {
		t.Fatalf("allocate: %v %v", resp, err)
	}
	for _, cr := range resp.ContainerResponses {
		if cr.Envs["NVIDIA_VISIBLE_DEVICES"] != "GPU-0b1c,GPU-9f2e" || cr.Envs["MEMCUDA_SOCKET"] != "/run/memcuda/agent.sock" {
			t.Fatalf("envs %v", cr.Envs)
		}
	}
}

func TestReregistersWhenTheKubeletRestarts(t *testing.T) {
	dir := t.TempDir()
	k := startKubelet(t, dir)
	p := runPlugin(t, Config{ResourceName: "memcuda.io/tensors", Slots: 1, PluginDir: dir, HostSocket: "/run/memcuda/agent.sock"})
	ctx := context.Background()
	k.waitRegister(t)
	waitRegistrations(t, p, 1) // the plugin saw the first registration succeed

	// A restarting kubelet removes the plugin sockets and recreates its own.
	k.srv.Stop()
	os.Remove(filepath.Join(dir, "memcuda.sock"))
	k2 := startKubelet(t, dir)
	reg := k2.waitRegister(t)
	waitRegistrations(t, p, 2)
	// The new kubelet can use the plugin.
	c := k2.dialPlugin(t, reg.Endpoint)
	if _, err := c.GetDevicePluginOptions(ctx, &pluginapi.Empty{}); err != nil {
		t.Fatalf("plugin unreachable after re-registration: %v", err)
	}
}

func waitRegistrations(t *testing.T, p *Plugin, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.Registrations() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d registrations, want %d", p.Registrations(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRegistrationRetriesUntilTheKubeletIsUp(t *testing.T) {
	dir := t.TempDir()
	runPlugin(t, Config{ResourceName: "memcuda.io/tensors", Slots: 1, PluginDir: dir, HostSocket: "/run/memcuda/agent.sock"})
	time.Sleep(500 * time.Millisecond)
	k := startKubelet(t, dir)
	k.waitRegister(t)
}

func TestConfigErrors(t *testing.T) {
	if _, err := New(Config{ResourceName: "x", Slots: 0, PluginDir: "/d", HostSocket: "/s"}, slog.Default()); err == nil {
		t.Fatal("zero slots accepted")
	}
}
