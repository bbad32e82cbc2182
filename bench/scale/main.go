// Command scale fills an agent with many tensors and measures what users
// feel: memcuda ls (table and JSON), the Go client's paged list, a get of a
// random name against a repeated one, and the agent's and Redis's memory
// per tensor. Bounded in count; Unix sockets only.
//
//	scale -socket PATH -agent-pid PID -redis-url URL -cli BIN/memcuda [-n 100000]
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/memcuda/memcuda/pkg/client"
)

func main() {
	socket := flag.String("socket", "", "agent socket")
	pid := flag.Int("agent-pid", 0, "agent's pid")
	redisURL := flag.String("redis-url", "", "the agent's Redis")
	cli := flag.String("cli", "memcuda", "the memcuda CLI")
	n := flag.Int("n", 100000, "tensors")
	gets := flag.Int("gets", 5000, "gets timed per measure")
	flag.Parse()
	ctx := context.Background()
	opt, err := redis.ParseURL(*redisURL)
	must(err)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	c, err := client.Dial(ctx, *socket)
	must(err)
	defer c.Close()

	redis0, rss0 := redisMemory(ctx, rdb), rssKiB(*pid)
	start := time.Now()
	for i := 0; i < *n; i++ {
		t, err := c.Create(ctx, fmt.Sprintf("s.%06d", i), "f32", []int64{64})
		must(err)
		must(t.Release(ctx))
	}
	fill := time.Since(start)
	// Every registry write done: a list waits for them.
	list, err := c.List(ctx)
	must(err)
	redis1, rss1 := redisMemory(ctx, rdb), rssKiB(*pid)
	fmt.Printf("%d tensors created in %v (%d listed)\n", *n, fill.Round(time.Millisecond), len(list))

	t0 := time.Now()
	list, err = c.List(ctx)
	must(err)
	goList := time.Since(t0)
	table := timeCLI(*cli, *socket, "ls")
	jsonOut := timeCLI(*cli, *socket, "ls", "-o", "json")

	// Warm: this connection holds the tensor, so a get is answered from
	// the connection's own count. Unheld: each get is the connection's
	// first reference and each release its last.
	held, err := c.Get(ctx, "s.000000")
	must(err)
	repeatedHeld := timeGets(ctx, c, *gets, func(int) string { return "s.000000" })
	must(held.Release(ctx))
	repeated := timeGets(ctx, c, *gets, func(int) string { return "s.000001" })
	random := timeGets(ctx, c, *gets, func(int) string { return fmt.Sprintf("s.%06d", rand.IntN(*n)) })

	fmt.Println()
	fmt.Printf("| measure (%d tensors) | result | baseline | ratio |\n", *n)
	fmt.Println("| --- | --- | --- | --- |")
	fmt.Printf("| `memcuda ls`, table | %v | | |\n", table.Round(time.Millisecond))
	fmt.Printf("| `memcuda ls -o json` | %v | | |\n", jsonOut.Round(time.Millisecond))
	fmt.Printf("| Go client `List` (pages of 1000) | %v, %d records | | |\n", goList.Round(time.Millisecond), len(list))
	fmt.Printf("| get+release of a random name, p50 | %.1f us | the same name again: %.1f us | %.2fx |\n", us(random), us(repeated), us(random)/us(repeated))
	fmt.Printf("| get+release of a random name, p50 | %.1f us | a name the connection holds: %.1f us | %.2fx |\n", us(random), us(repeatedHeld), us(random)/us(repeatedHeld))
	fmt.Printf("| agent memory per tensor | %.0f B | RSS %d -> %d MiB | |\n", float64(rss1-rss0)*1024/float64(*n), rss0>>10, rss1>>10)
	fmt.Printf("| Redis memory per tensor | %.0f B | used_memory %d -> %d MiB | |\n", float64(redis1-redis0)/float64(*n), redis0>>20, redis1>>20)
}

func timeGets(ctx context.Context, c *client.Client, n int, name func(int) string) time.Duration {
	took := make([]time.Duration, 0, n)
	for i := 0; i < n+200; i++ {
		nm := name(i)
		t0 := time.Now()
		t, err := c.Get(ctx, nm)
		must(err)
		must(t.Release(ctx))
		if i >= 200 {
			took = append(took, time.Since(t0))
		}
	}
	slices.Sort(took)
	return took[len(took)/2]
}

func timeCLI(cli, socket string, args ...string) time.Duration {
	cmd := exec.Command(cli, append([]string{"--socket", socket, "--timeout", "60s"}, args...)...)
	cmd.Stdout, cmd.Stderr = nil, os.Stderr
	t0 := time.Now()
	must(cmd.Run())
	return time.Since(t0)
}

func redisMemory(ctx context.Context, rdb *redis.Client) int64 {
	info, err := rdb.Info(ctx, "memory").Result()
	must(err)
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(err)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}
