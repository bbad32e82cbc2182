package nodecpu

import (
	"math"
	"runtime"
	"strings"
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

// The node's own /proc/stat: a busy CPU shows in the idle figure.
func TestSamplerReadsTheNode(t *testing.T) {
	first, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if first.CPUs < 1 || first.Total == 0 || first.Idle > first.Total {
		t.Fatalf("Read = %+v", first)
	}
	var s Sampler
	if idle, err := s.IdleCPUs(); err != nil || idle != 0 {
		t.Fatalf("first sample: %v, %v; want 0 (no interval yet)", idle, err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { // one CPU busy throughout the next sample
		runtime.LockOSThread()
		for !stop.Load() {
		}
		close(done)
	}()
	time.Sleep(500 * time.Millisecond)
	idle, err := s.IdleCPUs()
	stop.Store(true)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if cpus := float64(first.CPUs); idle < 0 || idle > cpus-0.5 || math.IsNaN(idle) {
		t.Fatalf("with one of %v CPUs busy for the whole sample: %v idle CPUs, want 0 to %v", cpus, idle, cpus-0.5)
	}
}
