package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/client"
	"github.com/memcuda/memcuda/pkg/registry"
)

// Host tensors outlive their agent, stopped (SIGTERM) or killed (SIGKILL):
// the next instance adopts the shared memory, the record keeps its uid,
// and a client that holds a tensor across the restart keeps reading and
// writing its mapping, reconnects by itself and takes its reference over;
// refcounts stay exact, and a second client sees the first one's writes.
func TestHostTensorsSurviveRestarts(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent("--reattach-grace", "1s")
			ctx := context.Background()
			c := e.dial()
			x, err := c.Create(ctx, "x", "u8", []int64{1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			fill := func(b []byte, seed byte) {
				for i := range b {
					b[i] = seed + byte(i%251)
				}
			}
			fill(x.Bytes(), 1)
			y, err := c.Create(ctx, "y", "f32", []int64{64})
			if err != nil {
				t.Fatal(err)
			}
			if err := y.Release(ctx); err != nil {
				t.Fatal(err)
			}
			// x's create was answered before its record was written
			// (write-behind): what survives a crash is what reached Redis.
			e.waitFor("x's record in Redis", 2*time.Second, func() bool { return e.refcount("x") == 2 })
			before, err := e.stat("x")
			if err != nil {
				t.Fatal(err)
			}

			if sig == syscall.SIGTERM {
				a.stop()
			} else {
				a.kill()
			}
			if rec, err := e.stat("x"); err != nil || rec.UID != before.UID {
				t.Fatalf("record after the agent went: %+v %v", rec, err)
			}
			// The mapping works with no agent at all.
			fill(x.Bytes(), 2)
			e.startAgent("--reattach-grace", "1s")

			// The holder's next call reconnects, and it still holds x.
			if _, err := c.Stat(ctx, "y"); err != nil {
				t.Fatalf("first call after the restart: %v", err)
			}
			if c.Reconnects() != 1 {
				t.Fatalf("client reconnected %d times, want 1", c.Reconnects())
			}
			d := e.dial()
			x2, err := d.Get(ctx, "x")
			if err != nil {
				t.Fatal(err)
			}
			if x2.Info.UID != before.UID {
				t.Fatalf("x has uid %s after the restart, was %s", x2.Info.UID, before.UID)
			}
			want := make([]byte, 1<<20)
			fill(want, 2)
			if string(x2.Bytes()) != string(want) {
				t.Fatal("the new client does not see what the holder wrote across the restart")
			}
			fill(x.Bytes(), 3)
			fill(want, 3)
			if string(x2.Bytes()) != string(want) {
				t.Fatal("the two clients do not share memory after the restart")
			}
			// registry + the holder's reattached connection + d's.
			e.waitFor("x refcount 3", 3*time.Second, func() bool { return e.refcount("x") == 3 })
			e.waitFor("the grace to drop the old connections' references", 5*time.Second, func() bool {
				holders, _ := e.reg.Holders(ctx, "x")
				for h := range holders {
					if inst, ok := registry.ConnHolderInstance(h); ok && inst == before.Agent {
						return false
					}
				}
				return len(holders) == 3
			})
			if rc := e.refcount("x"); rc != 3 {
				t.Fatalf("x refcount %d after the grace, want 3", rc)
			}
			if rc := e.refcount("y"); rc != 1 {
				t.Fatalf("y refcount %d, want 1 (the registry's)", rc)
			}
			// Releasing on the reconnected client drops its reattached reference.
			if err := x.Release(ctx); err != nil {
				t.Fatal(err)
			}
			e.waitFor("x refcount 2", 2*time.Second, func() bool { return e.refcount("x") == 2 })
		})
	}
}

// A queue producer pushes creates while the agent is killed and started
// again: every command gets exactly one successful reply, none is applied
// twice, and tensors made before the crash are still there with their uid.
func TestQueueProducerAcrossACrash(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("--reattach-grace", "1s")
	ctx := context.Background()
	var pushed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cmd := v1.Command{Op: v1.OpCreate, Name: fmt.Sprintf("q%04d", i), DType: "u8", Shape: []int64{int64(100 + i)},
				ID: fmt.Sprintf("q%04d", i), ReplyTo: fmt.Sprintf("%sreply:q%04d", e.prefix, i)}
			b, _ := json.Marshal(cmd)
			for e.rdb.RPush(ctx, e.reg.Keys().Cmd(), b).Err() != nil {
				time.Sleep(5 * time.Millisecond)
			}
			pushed.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	e.waitFor("some commands applied", 5*time.Second, func() bool { n, _ := e.reg.Names(ctx); return len(n) > 20 })
	first, _ := e.stat("q0000")
	a.kill()
	time.Sleep(100 * time.Millisecond) // commands pile up with no agent
	e.startAgent("--reattach-grace", "1s")
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	n := int(pushed.Load())
	for i := 0; i < n; i++ {
		res, err := e.rdb.BLPop(ctx, 5*time.Second, fmt.Sprintf("%sreply:q%04d", e.prefix, i)).Result()
		if err != nil {
			t.Fatalf("reply %d of %d lost: %v", i, n, err)
		}
		var r v1.Reply
		mustJSON(t, res[1], &r)
		if !r.OK {
			t.Fatalf("command %d failed: %s", i, res[1])
		}
		if extra, _ := e.rdb.LLen(ctx, fmt.Sprintf("%sreply:q%04d", e.prefix, i)).Result(); extra != 0 {
			t.Fatalf("command %d answered %d more times", i, extra)
		}
	}
	names, _ := e.reg.Names(ctx)
	if len(names) != n {
		t.Fatalf("%d tensors for %d commands", len(names), n)
	}
	for _, name := range names {
		if rc := e.refcount(name); rc != 1 {
			t.Fatalf("%s refcount %d: a command was applied twice", name, rc)
		}
	}
	if rec, err := e.stat("q0000"); err != nil || rec.UID != first.UID {
		t.Fatalf("q0000 after the crash: %+v %v, was uid %s", rec, err, first.UID)
	}
	t.Logf("%d commands across the crash", n)
}

// A client call that cannot be sent again safely (delete) while the agent
// restarts fails with ErrDisconnected and says so; a client that may not
// reconnect fails at once.
func TestUnsafeCallDuringARestartSaysSo(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent()
	ctx := context.Background()
	c := e.dial()
	if _, err := c.Create(ctx, "d", "f32", []int64{4}); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	noRetry, err := client.Dial(dctx, e.socket, client.WithReconnect(0))
	if err != nil {
		t.Fatal(err)
	}
	defer noRetry.Close()
	a.stop()
	e.startAgent()
	err = c.Delete(ctx, "d")
	if err == nil || !strings.Contains(err.Error(), "may or may not have been applied") {
		t.Fatalf("delete across a restart: %v", err)
	}
	if _, err := noRetry.Stat(ctx, "d"); err == nil {
		t.Fatal("a client without reconnect answered after its agent restarted")
	}
	if _, err := os.Stat(e.socket); err != nil {
		t.Fatal(err)
	}
}

// A new instance started while the agent runs takes over without a gap: the
// old one hands over its socket and lock and exits, clients reconnect to the
// same socket and reattach, and a client getting and releasing throughout
// sees no error.
func TestHandOverToANewInstance(t *testing.T) {
	e := newEnv(t)
	old := e.startAgent("--reattach-grace", "2s")
	ctx := context.Background()
	c := e.dial()
	x, err := c.Create(ctx, "x", "u8", []int64{4096})
	if err != nil {
		t.Fatal(err)
	}
	copy(x.Bytes(), "before the hand-over")
	if _, err := c.Create(ctx, "y", "f32", []int64{16}); err != nil {
		t.Fatal(err)
	}
	// Through the agent, which answers once x's registry write is done.
	before, err := c.Stat(ctx, "x")
	if err != nil || before.UID == "" {
		t.Fatalf("x before the hand-over: %+v %v", before, err)
	}

	loop := e.dial()
	var ops, failures atomic.Int64
	var maxGap atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tn, err := loop.Get(ctx, "y")
			if err == nil {
				err = tn.Release(ctx)
			}
			if err != nil {
				failures.Add(1)
				t.Logf("get+release during the hand-over: %v", err)
				continue
			}
			ops.Add(1)
			now := time.Now()
			if gap := now.Sub(last); gap > time.Duration(maxGap.Load()) {
				maxGap.Store(int64(gap))
			}
			last = now
		}
	}()
	time.Sleep(50 * time.Millisecond)
	next := e.startAgent("--reattach-grace", "2s")
	select {
	case <-old.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the old instance did not exit after handing over")
	}
	if code := old.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the old instance exited with %d", code)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	<-done
	if failures.Load() != 0 {
		t.Fatalf("%d calls failed during the hand-over", failures.Load())
	}
	t.Logf("%d get+release during the hand-over; longest gap %v", ops.Load(), time.Duration(maxGap.Load()))

	rec, err := e.stat("x")
	if err != nil || rec.UID != before.UID || rec.Agent == before.Agent {
		t.Fatalf("x after the hand-over: %+v %v", rec, err)
	}
	if string(x.Bytes()[:20]) != "before the hand-over" {
		t.Fatal("the holder's mapping changed")
	}
	d := e.dial()
	x2, err := d.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if string(x2.Bytes()[:20]) != "before the hand-over" {
		t.Fatal("the new instance serves other bytes")
	}
	if _, err := c.Stat(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if c.Reconnects() != 1 || loop.Reconnects() != 1 {
		t.Fatalf("reconnects: holder %d, looping client %d; want 1 each", c.Reconnects(), loop.Reconnects())
	}
	e.waitFor("refcounts of x and y exact after the grace", 6*time.Second, func() bool {
		return e.refcount("x") == 3 && e.refcount("y") == 2 // registry + c (+ d for x)
	})
	b, _ := os.ReadFile(next.log)
	if !strings.Contains(string(b), "took over from the previous instance") {
		t.Fatalf("the new instance did not log the take-over:\n%s", b)
	}
}

// Redis restarted without its data: the agent writes back the records of
// the memory it holds, with their holders, so names resolve again,
// refcounts are right, releases work, and a create of an existing name
// does not allocate a second block.
func TestRedisLosingItsDataGetsTheRecordsBack(t *testing.T) {
	e := newEnv(t)
	e.startAgent()
	ctx := context.Background()
	c := e.dial()
	x, err := c.Create(ctx, "x", "f32", []int64{1024})
	if err != nil {
		t.Fatal(err)
	}
	y, err := c.Create(ctx, "y", "u8", []int64{10})
	if err != nil {
		t.Fatal(err)
	}
	if err := y.Release(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitFor("records in Redis", 2*time.Second, func() bool { return e.refcount("x") == 2 && e.refcount("y") == 1 })
	before, _ := e.stat("x")
	e.redis.RestartEmpty()
	e.rdb = e.redis.Client()
	e.reg = registry.New(e.rdb, registry.Keys{Prefix: e.prefix, Node: "node-e2e"})
	e.waitFor("the agent to write the records back", 10*time.Second, func() bool {
		rec, err := e.stat("x")
		return err == nil && rec.UID == before.UID
	})
	if rc := e.refcount("x"); rc != 2 {
		t.Fatalf("x refcount %d after the write-back, want 2 (registry and the holding connection)", rc)
	}
	if rc := e.refcount("y"); rc != 1 {
		t.Fatalf("y refcount %d after the write-back, want 1", rc)
	}
	again, err := c.Create(ctx, "y", "u8", []int64{10})
	if err != nil || again.Info.UID != y.Info.UID {
		t.Fatalf("create of y after the write-back: %+v %v; want the same tensor", again, err)
	}
	if err := again.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := x.Release(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitFor("x back to the registry's reference", 2*time.Second, func() bool { return e.refcount("x") == 1 })
	stats, err := c.Stats(ctx)
	if err != nil || stats.Tensors != 2 {
		t.Fatalf("stats after the write-back: %+v %v; want 2 tensors", stats, err)
	}
}
