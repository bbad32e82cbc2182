package nodecpu

import (
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	const stat = "cpu  100 5 50 800 20 3 2 10 7 0\n" +
		"cpu0 50 5 25 400 10 1 1 5 7 0\n" +
		"cpu1 50 0 25 400 10 2 1 5 0 0\n" +
		"intr 123 0 0 0\n"
	got, err := Parse(strings.NewReader(stat))
	if err != nil {
		t.Fatal(err)
	}
	// Guest time (the ninth field) is in user already and not added again.
	if want := (Times{Idle: 820, Total: 990, CPUs: 2}); got != want {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
	later := Times{Idle: 820 + 150, Total: 990 + 200, CPUs: 2}
	if idle := IdleCPUs(got, later); idle != 1.5 {
		t.Fatalf("150 of 200 ticks idle on 2 CPUs: %v idle CPUs, want 1.5", idle)
	}
	if idle := IdleCPUs(later, got); idle != 0 {
		t.Fatalf("times that went back: %v idle CPUs, want 0", idle)
	}
	for _, bad := range []string{"", "intr 1 2\n", "cpu  1 2 3\ncpu0 1 2 3\n", "cpu  1 2 3 x 5 6 7 8\ncpu0 1\n", "cpu  1 2 3 4 5 6 7 8\n"} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q) took it", bad)
		}
	}
}

func TestParsePressure(t *testing.T) {
	got, err := ParsePressure([]byte("some avg10=5.29 avg60=8.10 avg300=8.41 total=3674487455\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"))
	if err != nil || got != 3674487455 {
		t.Fatalf("ParsePressure = %d, %v; want 3674487455", got, err)
	}
	for _, bad := range []string{"", "full avg10=0 total=5\n", "some avg10=1.0\n", "some total=x\n"} {
		if _, err := ParsePressure([]byte(bad)); err == nil {
			t.Errorf("ParsePressure(%q) took it", bad)
		}
	}
}

// The gate's thresholds: on pressure, stop at the maximum and start below
// two thirds of it; on idle CPUs, start with room for every spinner and
// the minimum, and stop under the minimum.
func TestGateThresholds(t *testing.T) {
	p := &Gate{maxPressure: 0.3, signal: SignalPressure}
	i := &Gate{spinners: 2, minIdle: 1.5, signal: SignalIdle}
	for _, c := range []struct {
		g      *Gate
		v      float64
		on, ok bool
	}{
		{p, 0.1, false, true}, {p, 0.2, false, false}, {p, 0.25, true, true}, {p, 0.3, true, false}, {p, 0.9, false, false},
		{i, 3.5, false, true}, {i, 3, false, false}, {i, 1.5, true, true}, {i, 1.4, true, false}, {i, 0, false, false},
	} {
		if got := c.g.allow(c.v, c.on); got != c.ok {
			t.Errorf("%s %v, polls on=%v: allow %v, want %v", c.g.signal, c.v, c.on, got, c.ok)
		}
	}
}

// busy keeps n OS threads running until the returned stop is called.
func busy(n int) (stop func()) {
	var done atomic.Bool
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for !done.Load() {
			}
		}()
	}
	return func() { done.Store(true); wg.Wait() }
}

// On the node's own CPUs: with more running threads than CPUs, tasks wait
// for CPUs and none is idle, so the gate, whichever signal it reads, keeps
// polls off.
func TestGateOnABusyNode(t *testing.T) {
	g, err := NewGate(1, 0.3, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if _, v := g.Last(); !math.IsNaN(v) {
		t.Fatalf("before a sample: %v, want NaN", v)
	}
	idle := &Gate{spinners: 1, minIdle: 0.5, signal: SignalIdle, value: math.NaN()}
	if idle.times, err = Read(); err != nil {
		t.Fatal(err)
	}
	prev := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(2*runtime.NumCPU() + 2)
	defer runtime.GOMAXPROCS(prev)
	stop := busy(2*runtime.NumCPU() + 1)
	g.Allow(false) // the sample starts with the load on
	idle.Allow(false)
	time.Sleep(500 * time.Millisecond)
	on, err := g.Allow(true)
	onIdle, errIdle := idle.Allow(true)
	stop()
	if err != nil || errIdle != nil {
		t.Fatal(err, errIdle)
	}
	if signal, v := g.Last(); on || signal == SignalPressure && v < 0.5 || signal == SignalIdle && v > 0.5 {
		t.Fatalf("%d threads busy on %d CPUs: the gate read %s %v and allowed polls=%v", 2*runtime.NumCPU()+1, runtime.NumCPU(), signal, v, on)
	}
	if _, v := idle.Last(); onIdle || v > 0.5 {
		t.Fatalf("%d threads busy on %d CPUs: %v idle CPUs, polls allowed=%v", 2*runtime.NumCPU()+1, runtime.NumCPU(), v, onIdle)
	}
}

// The node's own /proc/stat parses.
func TestRead(t *testing.T) {
	first, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if first.CPUs < 1 || first.Total == 0 || first.Idle > first.Total {
		t.Fatalf("Read = %+v", first)
	}
}
