// Command connsoak holds many idle connections and slowloris clients on an
// agent while a well-behaved client measures its warm gets, and reads the
// agent's threads and memory before, during and after: the figures of
// docs/benchmarks.md's hostile-load table. The idle connections and the
// slowloris clients are each held by a process of their own, as other
// clients would be: the timed client's process stays small (its own
// garbage collector would otherwise scan the crowd's connections while it
// is timed). Bounded in count and time; Unix sockets only.
//
//	connsoak -socket PATH -agent-pid PID [-idle 18900 -slowloris 1000 -gets 50000 -rounds 2]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
)

func main() {
	socket := flag.String("socket", "", "agent socket")
	pid := flag.Int("agent-pid", 0, "agent's pid (threads and memory are read from /proc)")
	idle := flag.Int("idle", 18900, "idle connections (half say hello first)")
	slow := flag.Int("slowloris", 1000, "slowloris clients, in a process of their own: one byte of a frame every -drip")
	drip := flag.Duration("drip", 500*time.Millisecond, "slowloris pace")
	gets := flag.Int("gets", 50000, "warm gets timed in each phase")
	hold := flag.Duration("hold", 10*time.Second, "how long the load is held before the timed gets")
	rounds := flag.Int("rounds", 2, "crowds, one after the other (what one leaves must not add up)")
	role := flag.String("role", "", "internal: idle or slowloris")
	flag.Parse()
	switch *role {
	case "slowloris":
		slowloris(*socket, *slow, *drip)
		return
	case "idle":
		holdIdle(*socket, *idle)
		return
	}
	if *socket == "" || *pid == 0 {
		fmt.Fprintln(os.Stderr, "connsoak: -socket and -agent-pid are needed")
		os.Exit(2)
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, *socket)
	must(err)
	defer c.Close()
	t, err := c.Create(ctx, "soak.get", "f32", []int64{256})
	must(err)
	defer t.Release(ctx)
	warm := func() (p50, p99 time.Duration) {
		took := make([]time.Duration, 0, *gets)
		for i := 0; i < *gets+500; i++ {
			t0 := time.Now()
			x, err := c.Get(ctx, "soak.get")
			must(err)
			d := time.Since(t0)
			must(x.Release(ctx))
			if i >= 500 {
				took = append(took, d)
			}
		}
		slices.Sort(took)
		return took[len(took)/2], took[len(took)*99/100]
	}
	// The idle figures are the most of before and after the idle gets:
	// serving one client is part of what an idle agent needs.
	st0 := status(*pid)
	b50, b99 := warm()
	st0 = st0.max(status(*pid))
	fmt.Printf("idle agent: %s; warm get p50 %v, p99 %v\n", st0, b50, b99)
	rows := []string{fmt.Sprintf("| idle | 1 | %d | %d | %d | %.1f | %.1f | 1.00 |", st0.threads, st0.rss>>10, st0.anon>>10, us(b50), us(b99))}
	self, _ := os.Executable()
	for round := 1; round <= *rounds; round++ {
		start := time.Now()
		idlers := exec.Command(self, "-role", "idle", "-socket", *socket, "-idle", strconv.Itoa(*idle))
		idlers.Stderr = os.Stderr
		ready, err := idlers.StdoutPipe()
		must(err)
		must(idlers.Start())
		var opened int
		if _, err := fmt.Fscan(ready, &opened); err != nil {
			must(fmt.Errorf("the idle connections' process: %w", err))
		}
		fmt.Printf("round %d: %d idle connections open after %v\n", round, opened, time.Since(start).Round(time.Millisecond))
		var sl *exec.Cmd
		if *slow > 0 {
			sl = exec.Command(self, "-role", "slowloris", "-socket", *socket, "-slowloris", strconv.Itoa(*slow), "-drip", drip.String())
			sl.Stderr = os.Stderr
			must(sl.Start())
		}
		time.Sleep(*hold)
		st1 := status(*pid)
		l50, l99 := warm()
		st1 = st1.max(status(*pid))
		fmt.Printf("round %d: loaded agent: %s; warm get p50 %v, p99 %v\n", round, st1, l50, l99)
		if sl != nil {
			sl.Process.Signal(syscall.SIGTERM)
			sl.Wait()
		}
		idlers.Process.Signal(syscall.SIGTERM) // it closes them all and exits
		idlers.Wait()
		// The agent notices every close, drops the leases and gives
		// memory back (a second after the crowd stopped shrinking): wait,
		// up to 30 s, until threads are within 10 % of the idle agent's
		// and anonymous memory has stopped falling. (The rest of RSS is
		// the agent's program text as read from its file, which grows once
		// code is first run and is not memory the crowd holds; the runtime
		// keeps a few MiB of span records and goroutine stacks for good.)
		closed := time.Now()
		st2 := status(*pid)
		for time.Since(closed) < 30*time.Second {
			time.Sleep(time.Second)
			prev := st2
			st2 = status(*pid)
			settled := float64(st2.anon) >= 0.99*float64(prev.anon) && time.Since(closed) >= 3*time.Second
			if float64(st2.threads) <= 1.1*float64(st0.threads) && settled {
				break
			}
		}
		fmt.Printf("round %d: after closing: %s, %v after the last close\n", round, st2, time.Since(closed).Round(time.Second))
		rows = append(rows,
			fmt.Sprintf("| loaded, round %d | %d idle + %d slowloris + 1 | %d | %d | %d | %.1f | %.1f | %.2f |", round, opened, *slow, st1.threads, st1.rss>>10, st1.anon>>10, us(l50), us(l99), us(l99)/us(b99)),
			fmt.Sprintf("| after round %d | 1 | %d (%+.0f%%) | %d (%+.0f%%) | %d (%+.0f%%) | | | |", round, st2.threads, pctOf(st2.threads, st0.threads), st2.rss>>10, pctOf(st2.rss, st0.rss), st2.anon>>10, pctOf(st2.anon, st0.anon)))
	}
	fmt.Println()
	fmt.Println("| phase | connections | agent threads | agent RSS MiB | of it anonymous MiB | warm get p50 us | warm get p99 us | p99 / idle p99 |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// holdIdle opens n idle connections (half say hello first), prints how
// many it opened, and holds them until told to stop.
func holdIdle(socket string, n int) {
	stop := make(chan os.Signal, 1)
	signalNotify(stop)
	hello, _ := v1.EncodeRequest(&v1.Request{ID: 1, Op: v1.OpHello})
	conns := make([]*net.UnixConn, 0, n)
	for i := 0; i < n; i++ {
		u, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
		if err != nil {
			fmt.Fprintf(os.Stderr, "connsoak: idle connection %d: %v\n", i, err)
			break
		}
		if i%2 == 0 {
			u.Write(hello)
			u.Read(make([]byte, 4096))
		}
		conns = append(conns, u)
	}
	fmt.Println(len(conns))
	<-stop
	for _, u := range conns {
		u.Close()
	}
}

// slowloris keeps n connections sending a frame one byte at a time; a
// connection the agent closes (its read timeout) is opened again.
func slowloris(socket string, n int, drip time.Duration) {
	frame, _ := v1.EncodeRequest(&v1.Request{ID: 1, Op: v1.OpStats})
	var wg sync.WaitGroup
	stop := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() { <-stop; close(done) }()
	signalNotify(stop)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Duration(i) * drip / time.Duration(n)) // spread the drips
			for {
				u, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
				if err != nil {
					return
				}
				tick := time.NewTicker(drip)
				for b := 0; ; b = (b + 1) % len(frame) {
					if _, err := u.Write(frame[b : b+1]); err != nil {
						break
					}
					select {
					case <-done:
						tick.Stop()
						u.Close()
						return
					case <-tick.C:
					}
				}
				tick.Stop()
				u.Close()
			}
		}(i)
	}
	wg.Wait()
}

func signalNotify(c chan os.Signal) { signalNotifyFunc(c) }

// agentStatus is what the agent holds: threads, and resident memory in
// KiB, all of it and its anonymous part.
type agentStatus struct{ threads, rss, anon int }

func (a agentStatus) max(b agentStatus) agentStatus {
	return agentStatus{max(a.threads, b.threads), max(a.rss, b.rss), max(a.anon, b.anon)}
}

func (a agentStatus) String() string {
	return fmt.Sprintf("%d threads, %d MiB RSS (%d MiB anonymous)", a.threads, a.rss>>10, a.anon>>10)
}

func status(pid int) agentStatus {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(err)
	var a agentStatus
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			a.threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			a.rss, _ = strconv.Atoi(f[1])
		case "RssAnon:":
			a.anon, _ = strconv.Atoi(f[1])
		}
	}
	return a
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func pctOf(v, base int) float64 { return 100 * float64(v-base) / float64(base) }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "connsoak:", err)
		os.Exit(1)
	}
}
