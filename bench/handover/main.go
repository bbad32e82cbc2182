// Command handover measures how long clients wait while a running agent
// hands over to a new instance (docs/benchmarks.md): a client gets and
// releases a tensor in a loop, timing every call, while -rounds successors
// are started one after another, each taking over from the one before. The
// longest call of each hand-over is the window clients see; the baseline is
// the longest call of an equal stretch with no hand-over, in the same run.
// Failed calls are counted (there should be none). Unix sockets only.
//
//	handover -agent BIN -socket PATH -redis-url URL -dir DIR [-rounds 10 -tensors 1000] [-- agent flags]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/memcuda/memcuda/pkg/client"
)

func main() {
	bin := flag.String("agent", "", "memcuda-agent binary")
	socket := flag.String("socket", "", "agent socket")
	redisURL := flag.String("redis-url", "", "Redis URL")
	dir := flag.String("dir", "", "directory for the agents' logs")
	rounds := flag.Int("rounds", 10, "hand-overs")
	tensors := flag.Int("tensors", 1000, "tensors the agent holds (adopted at each hand-over)")
	quiet := flag.Duration("quiet", 500*time.Millisecond, "time between hand-overs (also the baseline stretch)")
	flag.Parse()
	if *bin == "" || *socket == "" || *redisURL == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "handover: -agent, -socket, -redis-url and -dir are needed")
		os.Exit(2)
	}
	args := append([]string{"--redis-url", *redisURL, "--socket", *socket, "--metrics-addr", "", "--log-format", "text"}, flag.Args()...)
	var agents []*exec.Cmd
	start := func(i int) *exec.Cmd {
		log, err := os.Create(filepath.Join(*dir, fmt.Sprintf("agent-%d.log", i)))
		must(err)
		cmd := exec.Command(*bin, args...)
		cmd.Stdout, cmd.Stderr = log, log
		must(cmd.Start())
		agents = append(agents, cmd)
		return cmd
	}
	defer func() {
		for _, a := range agents {
			a.Process.Signal(syscall.SIGTERM)
			a.Wait()
		}
	}()
	start(0)
	ctx := context.Background()
	var c *client.Client
	for i := 0; i < 200; i++ {
		var err error
		if c, err = client.Dial(ctx, *socket); err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if c == nil {
		fmt.Fprintln(os.Stderr, "handover: the agent did not start")
		os.Exit(1)
	}
	defer c.Close()
	for i := 0; i < *tensors; i++ {
		t, err := c.Create(ctx, fmt.Sprintf("handover.%05d", i), "f32", []int64{256})
		must(err)
		must(t.Release(ctx))
	}
	held, err := c.Get(ctx, "handover.00000")
	must(err)
	defer held.Release(ctx)

	// The loop: every call timed; marks split it into stretches.
	var mu sync.Mutex
	var calls []time.Duration
	var fails atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			t, err := c.Get(ctx, "handover.00001")
			if err == nil {
				err = t.Release(ctx)
			}
			d := time.Since(t0)
			if err != nil {
				fails.Add(1)
				fmt.Fprintln(os.Stderr, "call failed:", err)
				continue
			}
			mu.Lock()
			calls = append(calls, d)
			mu.Unlock()
		}
	}()
	stretch := func() (longest time.Duration, n int) {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range calls {
			longest = max(longest, d)
		}
		n = len(calls)
		calls = calls[:0]
		return longest, n
	}
	time.Sleep(*quiet)
	stretch()
	var windows, baselines []time.Duration
	for r := 1; r <= *rounds; r++ {
		time.Sleep(*quiet)
		base, _ := stretch()
		baselines = append(baselines, base)
		prev := agents[len(agents)-1]
		t0 := time.Now()
		start(r)
		waitExit(prev)
		exited := time.Since(t0)
		time.Sleep(*quiet)
		win, n := stretch()
		windows = append(windows, win)
		fmt.Printf("hand-over %2d: longest call %8.2f ms (baseline %6.2f ms), predecessor gone %6.0f ms after the start, %d calls\n",
			r, ms(win), ms(base), ms(exited), n)
	}
	close(stop)
	<-done
	slices.Sort(windows)
	slices.Sort(baselines)
	fmt.Printf("\n%d hand-overs with %d tensors: window median %.2f ms, worst %.2f ms; baseline longest call median %.2f ms; failed calls %d\n",
		*rounds, *tensors, ms(windows[len(windows)/2]), ms(windows[len(windows)-1]), ms(baselines[len(baselines)/2]), fails.Load())
	fmt.Printf("reconnects %d; agent flags: %s\n", c.Reconnects(), strings.Join(flag.Args(), " "))
	if fails.Load() > 0 {
		os.Exit(1)
	}
}

func waitExit(cmd *exec.Cmd) {
	ch := make(chan struct{})
	go func() { cmd.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "handover: the predecessor did not exit")
		os.Exit(1)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "handover:", err)
		os.Exit(1)
	}
}
