package registry_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/blockingnet"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/registry"
)

// The registry's scripts as the agent runs them (Unix socket, no
// persistence), each with a PING on the same client as the baseline, over
// connections in Go's network poller and over blocking ones (what the
// agent uses).
func BenchmarkScripts(b *testing.B) {
	srv := redistest.StartVolatile(b)
	for _, mode := range []string{"poller", "blocking"} {
		opt := &redis.Options{Network: "unix", Addr: srv.Socket(), MaxRetries: -1}
		if mode == "blocking" {
			opt.Dialer = blockingnet.Dialer(time.Second, nil)
		}
		rdb := redis.NewClient(opt)
		r := registry.New(rdb, registry.Keys{Prefix: "b:", Node: mode})
		ctx := context.Background()
		if err := r.Load(ctx); err != nil {
			b.Fatal(err)
		}
		b.Run(mode+"/ping", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := rdb.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		trivial := redis.NewScript("return 1")
		b.Run(mode+"/trivial-script", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := trivial.Run(ctx, rdb, nil).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		seq := 0
		b.Run(mode+"/create", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				seq++
				rec := record(fmt.Sprintf("c%d", seq))
				if _, err := r.Create(ctx, rec, "conn:1", ""); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if _, err := r.Release(ctx, rec.Name, "conn:1", registry.AllRefs, false, ""); err != nil {
					b.Fatal(err)
				}
				if _, err := r.Release(ctx, rec.Name, registry.HolderRegistry, 1, true, ""); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
		created, err := r.Create(ctx, record("w"), "", "")
		if err != nil {
			b.Fatal(err)
		}
		known := func(string) (v1.Tensor, bool) { return created.Info, true } // as the agent does
		b.Run(mode+"/acquire+release", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := r.Acquire(ctx, "w", "conn:1", "inst1", "", known); err != nil {
					b.Fatal(err)
				}
				if _, err := r.Release(ctx, "w", "conn:1", registry.AllRefs, false, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
		if testing.Verbose() {
			// Redis's own time per command, to split a round trip.
			info, _ := rdb.Info(ctx, "commandstats").Result()
			b.Log(info)
		}
		rdb.Close()
	}
}
