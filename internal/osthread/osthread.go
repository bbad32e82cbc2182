// Package osthread gives the Go runtime's idle threads back to the system.
// The runtime starts a thread whenever one blocks in a system call and keeps
// it for good, so a crowd of connections leaves threads behind it. A
// goroutine that returns while locked to its thread ends that thread; this
// package uses that to end threads the runtime no longer needs.
package osthread

import (
	"runtime"
	"runtime/pprof"
	"time"

	"golang.org/x/sys/unix"
)

// Count is the number of threads the Go runtime has (threads that C code
// started are not counted: they are not the runtime's to end).
func Count() int { return pprof.Lookup("threadcreate").Count() }

// Trim ends threads until the runtime has at most keep, and returns how
// many it has then. Ending a thread the runtime still needs makes it start
// another (to run what the ended one woke, or because it has no idle thread
// left), so Trim stops once a few ends in a row lowered nothing: the runtime
// needs the threads it has. keep may be 0 (as few as the runtime needs).
// The process's main thread is never ended.
func Trim(keep int) int {
	// Locked here, the thread running Trim cannot run the goroutines it
	// starts: each runs on another thread, which it ends.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	held := make(chan struct{})
	defer close(held)
	n := Count()
	for misses := 0; n > keep && misses < trimMisses; {
		ended := make(chan bool)
		go func() {
			runtime.LockOSThread()
			if unix.Gettid() == unix.Getpid() {
				// Returning locked on the main thread parks it for good
				// instead of ending it. It is held until Trim returns
				// instead, so that the next ender runs elsewhere.
				ended <- false
				<-held
				runtime.UnlockOSThread()
				return
			}
			ended <- true
			// Returning locked ends this thread.
		}()
		if !<-ended {
			continue
		}
		// The thread exits just after the goroutine's last step: wait a
		// little for the count to show it.
		was := n
		for end := time.Now().Add(10 * time.Millisecond); n >= was && time.Now().Before(end); n = Count() {
			time.Sleep(50 * time.Microsecond)
		}
		if n < was {
			misses = 0
		} else {
			misses++
		}
	}
	return n
}

// trimMisses is how many ends in a row that lowered nothing stop Trim. More
// than one: on a loaded machine a thread may take longer to exit than Trim
// waits, and the next end then shows both.
const trimMisses = 4
