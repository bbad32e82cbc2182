package registry_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/memcuda/memcuda/internal/blockingnet"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/registry"
)

func waitUp(t *testing.T, l *registry.Liveness, want bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Up() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Up() never became %v", want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The watch sees a stopped Redis at the first look, with no round trip, and
// comes back with it. Both dialers the agent may use are covered.
func TestLivenessSeesRedisGoAndComeBack(t *testing.T) {
	srv := redistest.Start(t)
	dialers := map[string]func(context.Context) (net.Conn, error){
		"blocking": func(ctx context.Context) (net.Conn, error) {
			return blockingnet.Dialer(time.Second, nil)(ctx, "tcp", srv.Addr())
		},
		"poller": func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", srv.Socket())
		},
	}
	for name, dial := range dialers {
		t.Run(name, func(t *testing.T) {
			l := registry.NewLiveness(dial)
			defer l.Close()
			waitUp(t, l, true)
			for i := 0; i < 100; i++ {
				if !l.Up() {
					t.Fatal("a live Redis looked down")
				}
			}
			srv.Stop()
			if l.Up() {
				t.Fatal("Up() right after Redis stopped")
			}
			srv.Restart()
			waitUp(t, l, true)
			r := registry.New(srv.Client(), registry.Keys{Prefix: "t:", Node: "n1"}, registry.WithLiveness(l))
			if !r.Up() {
				t.Fatal("registry with a live watch says down")
			}
		})
	}
	if !registry.New(srv.Client(), registry.Keys{Prefix: "t:"}).Up() {
		t.Fatal("a registry without a watch must say up")
	}
}
