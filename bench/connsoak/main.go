// Command connsoak holds many idle connections and slowloris clients on an
// agent while a well-behaved client measures its warm gets, and reads the
// agent's threads and memory before, during and after: the figures of
// docs/benchmarks.md's hostile-load table. Bounded in count and time; Unix
// sockets only.
//
//	connsoak -socket PATH -agent-pid PID [-idle 18900 -slowloris 1000 -gets 20000]
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
	gets := flag.Int("gets", 20000, "warm gets timed in each phase")
	hold := flag.Duration("hold", 10*time.Second, "how long the load is held before the timed gets")
	role := flag.String("role", "", "internal: slowloris")
	flag.Parse()
	if *role == "slowloris" {
		slowloris(*socket, *slow, *drip)
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
	thr0, rss0 := status(*pid)
	b50, b99 := warm()
	thrA, rssA := status(*pid)
	thr0, rss0 = max(thr0, thrA), max(rss0, rssA)
	fmt.Printf("idle agent: %d threads, %d MiB RSS; warm get p50 %v, p99 %v\n", thr0, rss0>>10, b50, b99)

	hello, _ := v1.EncodeRequest(&v1.Request{ID: 1, Op: v1.OpHello})
	conns := make([]*net.UnixConn, 0, *idle)
	start := time.Now()
	for i := 0; i < *idle; i++ {
		u, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: *socket, Net: "unix"})
		if err != nil {
			fmt.Fprintf(os.Stderr, "connsoak: idle connection %d: %v\n", i, err)
			break
		}
		if i%2 == 0 {
			u.Write(hello)
			buf := make([]byte, 4096)
			u.Read(buf)
		}
		conns = append(conns, u)
	}
	fmt.Printf("%d idle connections open after %v\n", len(conns), time.Since(start).Round(time.Millisecond))
	var sl *exec.Cmd
	if *slow > 0 {
		self, _ := os.Executable()
		sl = exec.Command(self, "-role", "slowloris", "-socket", *socket, "-slowloris", strconv.Itoa(*slow), "-drip", drip.String())
		sl.Stderr = os.Stderr
		must(sl.Start())
	}
	time.Sleep(*hold)
	thr1, rss1 := status(*pid)
	l50, l99 := warm()
	thr2, rss2 := status(*pid)
	fmt.Printf("loaded agent: %d-%d threads, %d-%d MiB RSS; warm get p50 %v, p99 %v\n", thr1, thr2, rss1>>10, rss2>>10, l50, l99)
	if sl != nil {
		sl.Process.Signal(syscall.SIGTERM)
		sl.Wait()
	}
	for _, u := range conns {
		u.Close()
	}
	// The agent notices every close, drops the leases and gives memory back:
	// wait up to 30 s for both to be within 10 % of the idle agent's.
	closed := time.Now()
	thr3, rss3 := status(*pid)
	for time.Since(closed) < 30*time.Second && (float64(thr3) > 1.1*float64(thr0) || float64(rss3) > 1.1*float64(rss0)) {
		time.Sleep(time.Second)
		thr3, rss3 = status(*pid)
	}
	fmt.Printf("after closing: %d threads, %d MiB RSS, %v after the last close\n\n", thr3, rss3>>10, time.Since(closed).Round(time.Second))
	fmt.Println("| phase | connections | agent threads | agent RSS MiB | warm get p50 us | warm get p99 us | p99 / idle p99 |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	fmt.Printf("| idle | 1 | %d | %d | %.1f | %.1f | 1.00 |\n", thr0, rss0>>10, us(b50), us(b99))
	fmt.Printf("| loaded | %d idle + %d slowloris + 1 | %d | %d | %.1f | %.1f | %.2f |\n", len(conns), *slow, max(thr1, thr2), max(rss1, rss2)>>10, us(l50), us(l99), us(l99)/us(b99))
	fmt.Printf("| after closing | 1 | %d (%+.0f%%) | %d (%+.0f%%) | | | |\n", thr3, pctOf(thr3, thr0), rss3>>10, pctOf(rss3, rss0))
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

// status is the agent's thread count and RSS in KiB.
func status(pid int) (threads, rssKiB int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(err)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	return threads, rssKiB
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func pctOf(v, base int) float64 { return 100 * float64(v-base) / float64(base) }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "connsoak:", err)
		os.Exit(1)
	}
}
