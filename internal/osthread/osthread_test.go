package osthread

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// systemThreads is the process's thread count as the kernel sees it.
func systemThreads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

// blockThreads makes the runtime start threads: n goroutines each block
// in a system call at once. The call lasts long enough for the runtime's
// monitor, which hands a blocked thread's processor on and is slow to wake
// on a loaded machine, to start a thread for each.
func blockThreads(n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts := syscall.Timespec{Nsec: int64(250 * time.Millisecond)}
			syscall.Nanosleep(&ts, nil)
		}()
	}
	wg.Wait()
}

func TestTrimEndsTheThreadsACrowdLeft(t *testing.T) {
	// The fewest threads the runtime keeps once it has run a while.
	blockThreads(4)
	before := Trim(0)
	sysBefore := systemThreads(t)
	blockThreads(32)
	grown, sysGrown := Count(), systemThreads(t)
	if grown < before+16 || sysGrown < sysBefore+16 {
		t.Fatalf("32 blocked system calls left %d runtime and %d system threads, from %d and %d", grown, sysGrown, before, sysBefore)
	}
	t0 := time.Now()
	left := Trim(before)
	if left > before+1 {
		t.Fatalf("trimmed to %d, want %d (from %d)", left, before, grown)
	}
	if took := time.Since(t0); took > time.Second {
		t.Fatalf("trimming %d threads took %v", grown-left, took)
	}
	// The kernel counts a thread until it has finished exiting, a little
	// after the runtime let go of it.
	sys := systemThreads(t)
	for end := time.Now().Add(time.Second); sys > sysBefore+1 && time.Now().Before(end); sys = systemThreads(t) {
		time.Sleep(time.Millisecond)
	}
	if sys > sysBefore+1 {
		t.Fatalf("the system still counts %d threads, %d before the crowd", sys, sysBefore)
	}
	// The runtime still works and starts threads again when it needs them.
	blockThreads(8)
	if Count() < left+4 {
		t.Fatalf("after trimming, 8 blocked calls started only %d threads", Count()-left)
	}
}

func TestTrimBelowTheFloorStopsAtWhatTheRuntimeNeeds(t *testing.T) {
	n := Count()
	left := Trim(0)
	if left < 1 || left > n {
		t.Fatalf("Trim(0) left %d threads, from %d", left, n)
	}
	done := make(chan struct{})
	go func() { close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("no goroutine ran after Trim(0)")
	}
}
