// Command hostbench measures the agent end to end on the host backend:
// create (from a warm pool) and get+release latency over the socket, and
// warm get throughput with 1 and 16 client processes. Every figure is given
// next to a Redis PING round trip measured by the same processes in the same
// run, since each operation costs at least one Redis round trip.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/memcuda/memcuda/pkg/client"
)

type result struct {
	Get    []int64 `json:"get"`    // ns per get (round trip, reference taken)
	Create []int64 `json:"create"` // ns per create of a new name
	Ping   []int64 `json:"ping"`   // ns per Redis PING
	WallNS int64   `json:"wall_ns"`
	Gets   int     `json:"gets"`
}

func main() {
	worker := flag.Bool("worker", false, "internal: run one client process")
	socket := flag.String("socket", "", "agent socket")
	redisURL := flag.String("redis-url", os.Getenv("MEMCUDA_REDIS_URL"), "Redis URL (for the PING baseline)")
	procs := flag.String("procs", "1,16", "client process counts")
	ops := flag.Int("ops", 5000, "operations per process")
	start := flag.Int64("start", 0, "internal: unix ns at which workers begin")
	flag.Parse()
	ctx := context.Background()
	if *worker {
		if err := runWorker(ctx, *socket, *redisURL, *ops, *start); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	c, err := client.Dial(ctx, *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := c.Create(ctx, "bench.t", "f32", []int64{1024}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("| op | client processes | p50 us | p99 us | ops/s (all processes) | Redis PING p50 us (same run) | p50 / PING |\n")
	fmt.Printf("| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, ps := range strings.Split(*procs, ",") {
		n, _ := strconv.Atoi(ps)
		rs := spawn(n, *socket, *redisURL, *ops)
		var get, create, ping []int64
		var wall int64
		gets := 0
		for _, r := range rs {
			get, create, ping = append(get, r.Get...), append(create, r.Create...), append(ping, r.Ping...)
			wall = max(wall, r.WallNS)
			gets += r.Gets
		}
		pp := pct(ping, 50)
		tput := float64(gets) / (float64(wall) / 1e9)
		fmt.Printf("| get (segment mapped; first reference of the connection: one Redis script), ops/s of get+release pairs | %d | %.1f | %.1f | %.0f | %.1f | %.2f |\n", n, us(pct(get, 50)), us(pct(get, 99)), tput, us(pp), float64(pct(get, 50))/float64(pp))
		fmt.Printf("| create (warm pool) | %d | %.1f | %.1f | | %.1f | %.2f |\n", n, us(pct(create, 50)), us(pct(create, 99)), us(pp), float64(pct(create, 50))/float64(pp))
	}
	c.Delete(ctx, "bench.t")
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

func pct(xs []int64, p int) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]int64{}, xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

func spawn(n int, socket, redisURL string, ops int) []result {
	self, _ := os.Executable()
	start := time.Now().Add(time.Second).UnixNano()
	out := make([]result, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cmd := exec.Command(self, "-worker", "-socket", socket, "-redis-url", redisURL, "-ops", strconv.Itoa(ops), "-start", strconv.FormatInt(start, 10))
			cmd.Stderr = os.Stderr
			b, err := cmd.Output()
			if err != nil {
				fmt.Fprintln(os.Stderr, "worker failed:", err)
				os.Exit(1)
			}
			json.Unmarshal(b, &out[i])
		}(i)
	}
	wg.Wait()
	return out
}

func runWorker(ctx context.Context, socket, redisURL string, ops int, start int64) error {
	c, err := client.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	var r result
	// Warm up: map the segment, fill connection pools.
	for i := 0; i < 200; i++ {
		t, err := c.Get(ctx, "bench.t")
		if err != nil {
			return err
		}
		t.Release(ctx)
		rdb.Ping(ctx)
	}
	time.Sleep(time.Until(time.Unix(0, start)))
	t0 := time.Now()
	for i := 0; i < ops; i++ {
		s := time.Now()
		t, err := c.Get(ctx, "bench.t")
		r.Get = append(r.Get, int64(time.Since(s)))
		if err != nil {
			return err
		}
		if err := t.Release(ctx); err != nil {
			return err
		}
	}
	r.WallNS, r.Gets = int64(time.Since(t0)), ops
	for i := 0; i < ops/5; i++ {
		s := time.Now()
		if err := rdb.Ping(ctx).Err(); err != nil {
			return err
		}
		r.Ping = append(r.Ping, int64(time.Since(s)))
	}
	for i := 0; i < ops/5; i++ {
		name := fmt.Sprintf("bench.c.%d.%d", os.Getpid(), i)
		s := time.Now()
		t, err := c.Create(ctx, name, "f32", []int64{256})
		r.Create = append(r.Create, int64(time.Since(s)))
		if err != nil {
			return err
		}
		t.Release(ctx)
		if err := c.Delete(ctx, name); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}
