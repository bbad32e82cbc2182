package store_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/blockingnet"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/backend/gpu"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

// A create as the socket server runs it (bf16 256x1024 from a warm pool,
// zero-filled, with a lease), split into its parts: the registry script
// alone and a Redis PING on the same client are the baselines of the run.
func BenchmarkCreate(b *testing.B) {
	srv := redistest.StartVolatile(b)
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: srv.Socket(), MaxRetries: -1,
		Dialer: blockingnet.Dialer(time.Second, nil)})
	defer rdb.Close()
	ctx := context.Background()
	backends := map[v1.IPCMode]func() (backend.Backend, error){
		"host": func() (backend.Backend, error) { return host.New("b:", "inst1", host.WithDir(b.TempDir())), nil },
	}
	if gpu.Available() {
		for _, mode := range []v1.IPCMode{v1.ModeVMM, v1.ModeLegacy} {
			backends[mode] = func() (backend.Backend, error) { return gpu.New(mode, "inst1") }
		}
	}
	b.Run("redis-ping", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := rdb.Ping(ctx).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	seq := 0
	for _, name := range []v1.IPCMode{v1.ModeHost, v1.ModeVMM, v1.ModeLegacy} {
		open, ok := backends[name]
		if !ok {
			continue
		}
		be, err := open()
		if err != nil {
			b.Fatal(err)
		}
		// The agent's registry with write-behind watches Redis on a
		// connection of its own: the write-behind path peeks at it once per request.
		live := registry.NewLiveness(func(ctx context.Context) (net.Conn, error) {
			return blockingnet.Dialer(time.Second, nil)(ctx, "unix", srv.Socket())
		})
		defer live.Close()
		keys := registry.Keys{Prefix: "b:", Node: string(name)}
		regs := map[bool]*registry.Registry{false: registry.New(rdb, keys), true: registry.New(rdb, keys, registry.WithLiveness(live))}
		if err := regs[false].Load(ctx); err != nil {
			b.Fatal(err)
		}
		for _, v := range []struct {
			zero, writeBehind, live bool
		}{{false, false, false}, {true, false, false}, {true, true, false}, {true, true, true}} {
			reg := regs[v.live]
			if v.live {
				if err := reg.Load(ctx); err != nil {
					b.Fatal(err)
				}
			}
			st := store.New(reg, be, "inst1", string(name), store.WithZeroFill(v.zero), store.WithWriteBehind(v.writeBehind))
			if _, err := st.Adopt(ctx, nil); err != nil {
				b.Fatal(err)
			}
			// write-behind: what the client waits for (the script runs
			// after, untimed).
			label := fmt.Sprintf("%s/zero-fill=%v/write-behind=%v", name, v.zero, v.writeBehind)
			if v.live {
				label += "/liveness-peek"
			}
			b.Run(label, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					seq++
					n := fmt.Sprintf("c%d", seq)
					_, commit, err := st.Create(ctx, store.CreateParams{Name: n, DType: "bf16", Shape: []int64{256, 1024}, Holder: "conn:1", WriteBehind: true})
					if err != nil {
						b.Fatal(err)
					}
					if commit != nil {
						b.StopTimer()
						commit(ctx)
						b.StartTimer()
					}
					// Free it untimed: the next create reuses the block (a warm pool).
					b.StopTimer()
					if err := st.CloseLease(ctx, "conn:1", []string{n}); err != nil {
						b.Fatal(err)
					}
					if _, err := st.Delete(ctx, n, "", nil); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
			st.Close()
		}
		be.Close()
	}
}
