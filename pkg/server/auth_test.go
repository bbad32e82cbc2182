package server_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/server"
	"github.com/memcuda/memcuda/pkg/store"
)

// fakeAuth maps every connection to the namespace set before it dials
// (the connecting process is always this test).
type fakeAuth struct {
	mu     sync.Mutex
	ns     string
	shares map[string]string // owner -> reader
	denied []string
}

func (f *fakeAuth) Identify(_ context.Context, pid int) (server.Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return server.Identity{PID: pid, Namespace: f.ns, Pod: "p"}, nil
}

func (f *fakeAuth) Shares(_ context.Context, owner, reader string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.shares[owner] == reader
}

func (f *fakeAuth) Denied(_ context.Context, id server.Identity, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied = append(f.denied, msg)
}

func startServer(t *testing.T, auth server.Authorizer, allowHost bool) (string, *store.Store) {
	t.Helper()
	sock, st, _, _ := serve(t, server.WithAuthorizer(auth, allowHost))
	return sock, st
}

// serve starts a server with opts over a host backend and a real Redis:
// its socket, store and server, and stop, which ends Serve and waits for
// it to return (at the test's end too).
func serve(t *testing.T, opts ...server.Option) (string, *store.Store, *server.Server, func()) {
	t.Helper()
	srv := redistest.Start(t)
	reg := registry.New(srv.Client(), registry.Keys{Prefix: "a:", Node: "n"})
	if err := reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := store.New(reg, host.New("a:", "i", host.WithDir(t.TempDir())), "i", "n")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := server.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s := server.New(st, opts...)
	go func() { s.Serve(ctx, l); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; st.Close() }) }
	t.Cleanup(stop)
	return sock, st, s, stop
}

func dialAs(t *testing.T, a *fakeAuth, sock, ns string) *client.Client {
	t.Helper()
	a.mu.Lock()
	a.ns = ns
	a.mu.Unlock()
	c, err := client.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestNamespaceScoping(t *testing.T) {
	a := &fakeAuth{shares: map[string]string{}}
	sock, st := startServer(t, a, false)
	ctx := context.Background()
	ca := dialAs(t, a, sock, "team-a")
	w, err := ca.Create(ctx, "w", "f32", []int64{4})
	if err != nil {
		t.Fatal(err)
	}
	if w.Info.Name != "team-a/w" || w.Info.Tenant != "team-a" {
		t.Fatalf("stored as %q tenant %q", w.Info.Name, w.Info.Tenant)
	}
	if _, err := ca.Get(ctx, "team-a/w"); err != nil {
		t.Fatalf("own tensor by its full name: %v", err)
	}
	cb := dialAs(t, a, sock, "team-b")
	if _, err := cb.Get(ctx, "team-a/w"); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Fatalf("get of an unshared tensor: %v", err)
	}
	if _, err := cb.Get(ctx, "w"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("short names resolve in the caller's namespace: %v", err)
	}
	if list, _ := cb.List(ctx); len(list) != 0 {
		t.Fatalf("team-b lists %v", list)
	}
	a.mu.Lock()
	a.shares["team-a"] = "team-b"
	a.mu.Unlock()
	if _, err := cb.Get(ctx, "team-a/w"); err != nil {
		t.Fatalf("get of a shared tensor: %v", err)
	}
	if list, _ := cb.List(ctx); len(list) != 1 {
		t.Fatalf("team-b lists %d tensors, want the shared one", len(list))
	}
	for _, op := range []func() error{
		func() error { return cb.Delete(ctx, "team-a/w") },
		func() error { _, err := cb.Create(ctx, "team-a/new", "f32", []int64{1}); return err },
	} {
		if err := op(); !errors.Is(err, errdefs.ErrPermissionDenied) {
			t.Fatalf("writing another namespace's tensor: %v", err)
		}
	}
	// Tensors of different namespaces never share a segment.
	x, err := cb.Create(ctx, "x", "f32", []int64{4})
	if err != nil {
		t.Fatal(err)
	}
	if x.Info.SegmentID == w.Info.SegmentID {
		t.Fatal("two namespaces' tensors share a segment")
	}
	// Host processes are refused when not allowed, from hello on.
	a.mu.Lock()
	a.ns = ""
	a.mu.Unlock()
	if _, err := client.Dial(ctx, sock); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Fatalf("host client: %v", err)
	}
	a.mu.Lock()
	n := len(a.denied)
	a.mu.Unlock()
	if n < 4 {
		t.Fatalf("%d refusals reported, want each one", n)
	}
	if n := st.Stats().Tensors; n != 2 {
		t.Fatalf("%d tensors, want team-a/w and team-b/x", n)
	}
}

func TestHostClientsAllowed(t *testing.T) {
	a := &fakeAuth{}
	sock, _ := startServer(t, a, true)
	ch := dialAs(t, a, sock, "")
	tn, err := ch.Create(context.Background(), "plain", "u8", []int64{1})
	if err != nil || tn.Info.Name != "plain" {
		t.Fatalf("host client create: %+v %v", tn, err)
	}
}
