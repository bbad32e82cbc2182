package osthread

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// The runtime still works and starts threads again when it needs them:
	// 8 calls block at once, each on a thread of its own.
	if n := blockTogether(t, 8); n < 9 {
		t.Fatalf("after trimming, 8 calls blocked at once in a process of %d threads", n)
	}
}

// blockTogether has n goroutines block in a read of a pipe until all of
// them are in it (each started running, which with every earlier one
// holding its thread in the read needs a thread of its own), then lets
// them go; it returns the system thread count while they all blocked.
// Waiting for them instead of sleeping a fixed time keeps it right on a
// loaded machine, where the runtime's monitor hands processors on late.
func blockTogether(t *testing.T, n int) int {
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	var started atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Add(1)
			var b [1]byte
			syscall.Read(p[0], b[:])
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for started.Load() < int32(n) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // the last one from its Add into its read
	threads := systemThreads(t)
	syscall.Write(p[1], make([]byte, n))
	wg.Wait()
	if got := started.Load(); got < int32(n) {
		t.Fatalf("only %d of %d goroutines ran while the others blocked", got, n)
	}
	return threads
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
