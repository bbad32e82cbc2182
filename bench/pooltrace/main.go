// Command pooltrace replays an alloc/free trace (bench/alloc_trace.py gen)
// through mem-cuda's pool on a real backend and prints time per op and peak
// reserved / peak live, the allocator comparison of docs/benchmarks.md.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/backend/gpu"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/pool"
)

type op struct {
	alloc bool
	id    int
	size  uint64
}

func main() {
	mode := flag.String("backend", "vmm", "vmm, legacy, host, or sim (no memory: segment counts and sizes alone, for policy studies without a GPU)")
	simGranule := flag.Uint64("sim-granularity", 2<<20, "segment granularity of the sim backend (CUDA VMM's is 2 MiB)")
	zero := flag.Bool("zero", false, "zero-fill each block as the agent does")
	slack := flag.Float64("slack", -1, "free memory kept cached over the allocated bytes when the pool grows (default: the pool's, pool.DefaultCacheSlack or with -whole-maps pool.WholeMapsCacheSlack)")
	pieces := flag.Int("pieces", 1, "most pieces one allocation may be assembled from (1: one block each)")
	whole := flag.Bool("whole-maps", false, "pieces that abut when their segments are mapped whole, as CUDA VMM maps them (pool.WithWholeMaps)")
	growth := flag.Uint64("min-growth", 0, "MiB: a large request that no free block or pieces serve grows the pool by at least this much (pool.WithMinGrowth; with -pieces > 1)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: pooltrace [-backend vmm] trace.txt")
		os.Exit(2)
	}
	ops, err := load(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var be backend.Backend
	if *mode == "sim" {
		be = simBackend{granule: *simGranule}
	} else if *mode == "host" {
		dir, _ := os.MkdirTemp("", "pooltrace")
		defer os.RemoveAll(dir)
		be = host.New("pooltrace", "bench", host.WithDir(dir))
	} else if be, err = gpu.New(v1.IPCMode(*mode), "bench"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	opts := []pool.Option{pool.WithGranularity(be.Granularity(0))}
	if *slack >= 0 {
		opts = append(opts, pool.WithCacheSlack(*slack))
	}
	if *whole {
		opts = append(opts, pool.WithWholeMaps())
	}
	if *growth > 0 {
		opts = append(opts, pool.WithMinGrowth(*growth<<20))
	}
	var madeBytes uint64
	p := pool.New(pool.SourceFunc[backend.Segment](func(ctx context.Context, size uint64) (backend.Segment, error) {
		madeBytes += size
		return be.NewSegment(ctx, 0, size)
	}), opts...)
	ctx := context.Background()
	held := map[int][]*pool.Block[backend.Segment]{}
	var pieced, npieces int
	var live, peakLive uint64
	start := time.Now()
	for _, o := range ops {
		if o.alloc {
			bs, err := p.AllocPieces(ctx, o.size, *pieces)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			if *zero {
				for _, b := range bs {
					b.Segment().Zero(ctx, b.Offset(), b.Size())
				}
			}
			if len(bs) > 1 {
				pieced++
				npieces += len(bs)
			}
			held[o.id] = bs
			live += o.size
			peakLive = max(peakLive, live)
		} else {
			for _, b := range held[o.id] {
				live -= b.Requested()
				p.Free(b)
			}
			delete(held, o.id)
		}
	}
	per := time.Since(start) / time.Duration(len(ops))
	st := p.Stats()
	label := ""
	if *slack >= 0 {
		label = fmt.Sprintf(", slack %g", *slack)
	}
	if *pieces > 1 {
		label += fmt.Sprintf(", up to %d pieces", *pieces)
		if *whole {
			label += ", whole maps"
		}
		if *growth > 0 {
			label += fmt.Sprintf(", growth >= %d MiB", *growth)
		}
	}
	fmt.Printf("| mem-cuda pool (%s segments%s) | %.1f | %.3f |\n", *mode, label, float64(per.Nanoseconds())/1e3, float64(st.PeakReserved)/float64(peakLive))
	fmt.Fprintf(os.Stderr, "segments made %d (%.1f GiB), peak reserved %d, peak live %d, %d allocations in %d pieces\n",
		st.SegmentAllocs, float64(madeBytes)/(1<<30), st.PeakReserved, peakLive, pieced, npieces)
	p.Close()
}

func load(path string) ([]op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []op
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.Fields(sc.Text())
		if len(p) < 2 {
			continue
		}
		id, _ := strconv.Atoi(p[1])
		o := op{alloc: p[0] == "a", id: id}
		if o.alloc {
			o.size, _ = strconv.ParseUint(p[2], 10, 64)
		}
		ops = append(ops, o)
	}
	return ops, sc.Err()
}

// simBackend hands out segments that own no memory: the pool's decisions
// (how many segments, of which sizes) without a device or page faults.
type simBackend struct {
	backend.Backend // only NewSegment and Granularity are called
	granule         uint64
}

func (b simBackend) NewSegment(_ context.Context, _ int, size uint64) (backend.Segment, error) {
	return simSegment(size), nil
}

func (b simBackend) Granularity(int) uint64 { return b.granule }

func (b simBackend) Close() error { return nil }

type simSegment uint64

func (s simSegment) Size() uint64                               { return uint64(s) }
func (s simSegment) Release() error                             { return nil }
func (s simSegment) ID() string                                 { return "sim" }
func (s simSegment) Handle() string                             { return "" }
func (s simSegment) FD() int                                    { return -1 }
func (s simSegment) Zero(context.Context, uint64, uint64) error { return nil }
