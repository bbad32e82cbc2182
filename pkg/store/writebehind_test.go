package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

const lease = "conn:inst1:1"

func earlyCreate(t *testing.T, f *fixture, name string) (v1.Tensor, store.Commit) {
	t.Helper()
	info, commit, err := f.st.Create(context.Background(), store.CreateParams{Name: name, DType: "f32", Shape: []int64{4}, Holder: lease, WriteBehind: true})
	if err != nil {
		t.Fatal(err)
	}
	if commit == nil {
		t.Fatal("write-behind create ran its script before answering")
	}
	return info, commit
}

// result runs fn in the background; the channel gets its error.
func result(fn func() error) chan error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return ch
}

func pending(t *testing.T, ch chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s did not wait for the pending registry write: %v", what, err)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestCreateEarlyAnswersBeforeTheRecordAndOrdersLaterScripts(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	ctx := context.Background()
	info, commit := earlyCreate(t, f, "w")
	if info.Refcount != 2 || info.State != v1.StateReady || info.Agent != "inst1" {
		t.Fatalf("answer %+v", info)
	}
	if _, err := f.reg.Stat(ctx, "w"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("record in Redis before the commit: %v", err)
	}
	// Another holder's get and a stat through the store wait for the record.
	var got v1.Tensor
	get := result(func() (err error) {
		got, _, err = f.st.Get(ctx, store.GetParams{Name: "w", Holder: "pid:1:1"})
		return err
	})
	var st v1.Tensor
	stat := result(func() (err error) { st, err = f.st.Stat(ctx, "w"); return err })
	pending(t, get, "get")
	pending(t, stat, "stat")
	commit(ctx)
	if err := <-get; err != nil || got.UID != info.UID || got.Refcount != 3 {
		t.Fatalf("get after the commit: %+v %v", got, err)
	}
	if err := <-stat; err != nil || st.UID != info.UID {
		t.Fatalf("stat after the commit: %+v %v", st, err)
	}
	rec, err := f.reg.Stat(ctx, "w")
	if err != nil || rec.Refcount != 3 || rec.Offset != info.Offset || rec.SegmentID != info.SegmentID {
		t.Fatalf("record %+v %v", rec, err)
	}
	holders, _ := f.reg.Holders(ctx, "w")
	if holders[registry.HolderRegistry] != 1 || holders[lease] != 1 || holders["pid:1:1"] != 1 {
		t.Fatalf("holders %v", holders)
	}
}

func TestCreateEarlyIsSynchronousWhenItCannotBeEarly(t *testing.T) {
	ctx := context.Background()
	off := newFixture(t)
	if _, commit, err := off.st.Create(ctx, store.CreateParams{Name: "a", DType: "f32", Shape: []int64{1}, Holder: lease, WriteBehind: true}); err != nil || commit != nil {
		t.Fatalf("write-behind off: commit %v, err %v", commit != nil, err)
	}
	if rc, _ := off.reg.Stat(ctx, "a"); rc.Refcount != 2 {
		t.Fatalf("refcount %d", rc.Refcount)
	}
	f := newFixture(t, store.WithWriteBehind(true))
	_, commit := earlyCreate(t, f, "b")
	// A second creator of the name waits for the first one's record, then
	// gets the same tensor.
	var again v1.Tensor
	second := result(func() (err error) {
		var c store.Commit
		again, c, err = f.st.Create(ctx, store.CreateParams{Name: "b", DType: "f32", Shape: []int64{4}, Holder: "conn:inst1:2", WriteBehind: true})
		if c != nil {
			return errors.New("an existing name was answered before its registry write")
		}
		return err
	})
	pending(t, second, "second create")
	commit(ctx)
	if err := <-second; err != nil || again.Refcount != 3 {
		t.Fatalf("second create: %+v %v", again, err)
	}
	// Bad input is refused before anything is taken.
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "bad name!", DType: "f32", Shape: []int64{1}, Holder: lease, WriteBehind: true}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "c", DType: "f32", Shape: []int64{-1}, Holder: lease, WriteBehind: true}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("negative shape: %v", err)
	}
}

// A get answered before its registry write and a delete that follows it reach Redis in that
// order: the delete cannot free memory the get handed out.
func TestGetEarlyIsOrderedBeforeALaterDelete(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	ctx := context.Background()
	info, _, err := f.st.Create(ctx, store.CreateParams{Name: "w", DType: "f32", Shape: []int64{4}})
	if err != nil {
		t.Fatal(err)
	}
	got, commit, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: lease, WriteBehind: true})
	if err != nil || commit == nil || got.UID != info.UID || got.Refcount != 2 {
		t.Fatalf("write-behind get: %+v commit %v err %v", got, commit != nil, err)
	}
	var res registry.ReleaseResult
	del := result(func() (err error) { res, err = f.st.Delete(ctx, "w", "", nil); return err })
	pending(t, del, "delete")
	commit(ctx)
	if err := <-del; err != nil || res.Freed || res.Refcount != 1 {
		t.Fatalf("delete: %+v %v", res, err)
	}
	if _, ok := f.st.SegmentsOf(info.UID); !ok {
		t.Fatal("block freed under the write-behind get")
	}
	// Behind the delete, gets are refused by the agent at once.
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: "conn:inst1:2", WriteBehind: true}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get of a deleted tensor: %v", err)
	}
	if r, err := f.st.Release(ctx, store.ReleaseParams{Name: "w", Holder: lease, Count: registry.AllRefs}); err != nil || !r.Freed {
		t.Fatalf("last release: %+v %v", r, err)
	}
}

// Behind a script that may free the tensor, a get waits for its outcome.
func TestGetEarlyWaitsBehindAReleaseOrDelete(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	ctx := context.Background()
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "w", DType: "f32", Shape: []int64{4}, Holder: "pid:1:1"}); err != nil {
		t.Fatal(err)
	}
	release, started := make(chan struct{}), make(chan struct{})
	f.st.HoldTurn("w", started, release) // a delete or release in flight
	<-started
	early := make(chan bool, 1)
	get := result(func() error {
		_, c, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: lease, WriteBehind: true})
		early <- c != nil
		if c != nil {
			c(ctx)
		}
		return err
	})
	pending(t, get, "get behind a release")
	close(release)
	err := <-get
	if wasEarly := <-early; err != nil || wasEarly {
		t.Fatalf("get behind a release: err %v, answered before its write %v", err, wasEarly)
	}
}

// A registry write that finds Redis gone is retried until it is back; reads
// of the name through the agent answer unavailable meanwhile, not stale data.
func TestCommitRetriesUntilRedisIsBack(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	ctx := context.Background()
	info, commit := earlyCreate(t, f, "w")
	f.srv.Stop()
	short, cancel := context.WithTimeout(ctx, time.Second)
	commit(short)
	cancel()
	short, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
	if _, err := f.st.Stat(short, "w"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("stat while the write is pending: %v", err)
	}
	cancel()
	f.srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := f.st.Stat(ctx, "w")
		if err == nil {
			if rec.UID != info.UID || rec.Refcount != 2 {
				t.Fatalf("record after the retry %+v", rec)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("record never written: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A record Redis refuses (it has one of that name the agent did not know
// of) withdraws the tensor: the name is not served, and the creator's
// release frees the memory without touching the other record.
func TestRefusedCreateIsWithdrawn(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	ctx := context.Background()
	info, commit := earlyCreate(t, f, "w")
	rdb := f.srv.Client()
	keys := f.reg.Keys()
	rdb.HSet(ctx, keys.Meta("w"), "name", "w", "uid", "other-1", "state", "ready", "agent", "other", "refcount", 1)
	rdb.ZAdd(ctx, keys.Index(), redisZ("w"))
	commit(ctx)
	if _, ok := f.st.SegmentsOf(info.UID); !ok {
		t.Fatal("memory freed while its creator holds it")
	}
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: "conn:inst1:2", WriteBehind: true}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("get of the name: %v, want the other agent's record (stale)", err)
	}
	r, err := f.st.Release(ctx, store.ReleaseParams{Name: "w", Holder: lease, Count: registry.AllRefs})
	if err != nil || !r.Freed || r.UID != info.UID {
		t.Fatalf("creator's release: %+v %v", r, err)
	}
	if _, ok := f.st.SegmentsOf(info.UID); ok {
		t.Fatal("withdrawn tensor's memory not freed")
	}
	if rec, err := f.reg.Stat(ctx, "w"); err != nil || rec.UID != "other-1" || rec.Refcount != 1 {
		t.Fatalf("the other record was touched: %+v %v", rec, err)
	}
}

// Until the registry is reconciled a predecessor's record may still hold a
// name: creates wait for Redis's answer instead of trusting the agent's index.
func TestCreateIsSynchronousUntilReconciled(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	st := store.New(f.reg, f.be, "inst2", "n1", store.WithWriteBehind(true))
	defer st.Close()
	ctx := context.Background()
	p := store.CreateParams{Name: "w", DType: "f32", Shape: []int64{4}, Holder: "conn:inst2:1", WriteBehind: true}
	if _, c, err := st.Create(ctx, p); err != nil || c != nil {
		t.Fatalf("before reconciling: commit %v, err %v", c != nil, err)
	}
	if _, err := st.Adopt(ctx, nil); err != nil {
		t.Fatal(err)
	}
	p.Name = "x"
	if _, c, err := st.Create(ctx, p); err != nil || c == nil {
		t.Fatalf("after reconciling: commit %v, err %v", c != nil, err)
	} else {
		c(ctx)
	}
}

// withTensor is a write-behind fixture holding tensor "w" (created by no
// connection: the registry's reference only).
func withTensor(t *testing.T, opts ...store.Option) (*fixture, v1.Tensor) {
	t.Helper()
	f := newFixture(t, append([]store.Option{store.WithWriteBehind(true)}, opts...)...)
	info, _, err := f.st.Create(context.Background(), store.CreateParams{Name: "w", DType: "f32", Shape: []int64{4}})
	if err != nil {
		t.Fatal(err)
	}
	return f, info
}

// earlyGet is holder's get of name, which must be answered before its script.
func earlyGet(t *testing.T, f *fixture, name, holder string) (v1.Tensor, store.Commit) {
	t.Helper()
	got, commit, err := f.st.Get(context.Background(), store.GetParams{Name: name, Holder: holder, WriteBehind: true})
	if err != nil || commit == nil {
		t.Fatalf("write-behind get of %s: commit %v err %v", name, commit != nil, err)
	}
	return got, commit
}

// releaseAtOnce releases holder's reference on name, which must not wait
// for a registry script (its get's was cancelled).
func releaseAtOnce(t *testing.T, f *fixture, name, holder string) registry.ReleaseResult {
	t.Helper()
	var res registry.ReleaseResult
	ch := result(func() (err error) {
		res, err = f.st.Release(context.Background(), store.ReleaseParams{Name: name, Holder: holder, Count: registry.AllRefs})
		return err
	})
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("release: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the release waited for its get's registry script: the two were not coalesced")
	}
	return res
}

// A connection's reference released before its get's script started never
// reaches Redis: neither script runs, and the counts stay true.
func TestReleaseBeforeTheGetScriptCancelsBoth(t *testing.T) {
	f, info := withTensor(t)
	ctx := context.Background()
	got, commit := earlyGet(t, f, "w", lease)
	if got.Refcount != 2 {
		t.Fatalf("write-behind get: %+v", got)
	}
	res := releaseAtOnce(t, f, "w", lease)
	if res.Freed || res.UID != info.UID || res.Refcount != 1 {
		t.Fatalf("release before the get's script: %+v", res)
	}
	commit(ctx) // cancelled: writes nothing
	holders, _ := f.reg.Holders(ctx, "w")
	if _, ok := holders[lease]; ok || len(holders) != 1 {
		t.Fatalf("holders in Redis %v: the cancelled reference reached it", holders)
	}
	if rec, err := f.reg.Stat(ctx, "w"); err != nil || rec.Refcount != 1 {
		t.Fatalf("record %+v %v", rec, err)
	}
	if st, err := f.st.Stat(ctx, "w"); err != nil || st.Refcount != 1 {
		t.Fatalf("agent's record %+v %v", st, err)
	}
	// Once the get's script started, the release is a script of its own.
	_, commit = earlyGet(t, f, "w", lease)
	commit(ctx)
	if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 1 {
		t.Fatalf("holders after the get's script %v", holders)
	}
	if res, err := f.st.Release(ctx, store.ReleaseParams{Name: "w", Holder: lease, Count: registry.AllRefs}); err != nil || res.Refcount != 1 {
		t.Fatalf("release after the script: %+v %v", res, err)
	}
	if holders, _ := f.reg.Holders(ctx, "w"); len(holders) != 1 {
		t.Fatalf("holders after the release %v", holders)
	}
	// Only a connection's whole reference cancels: a queue release of one
	// reference (a request id) or another holder's release does not.
	_, commit, _ = f.st.Get(ctx, store.GetParams{Name: "w", Holder: lease, WriteBehind: true})
	other := result(func() error {
		_, err := f.st.Release(ctx, store.ReleaseParams{Name: "w", Holder: "conn:inst1:9", Count: registry.AllRefs})
		return err
	})
	pending(t, other, "another holder's release")
	commit(ctx)
	if err := <-other; !errors.Is(err, errdefs.ErrFailedPrecondition) && !errors.Is(err, errdefs.ErrNotFound) && err != nil {
		t.Fatalf("another holder's release: %v", err)
	}
	if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 1 {
		t.Fatalf("another holder's release took this one's reference: %v", holders)
	}
}

// A delete queued behind a get whose holder then releases it before the
// get's script ran frees the tensor: Redis never counted that reference.
func TestDeleteBehindACancelledGetFrees(t *testing.T) {
	f, info := withTensor(t)
	ctx := context.Background()
	_, commit := earlyGet(t, f, "w", lease)
	var res registry.ReleaseResult
	del := result(func() (err error) { res, err = f.st.Delete(ctx, "w", "", nil); return err })
	pending(t, del, "delete")
	releaseAtOnce(t, f, "w", lease)
	commit(ctx)
	if err := <-del; err != nil || !res.Freed {
		t.Fatalf("delete after the cancelled get: %+v %v", res, err)
	}
	if _, ok := f.st.SegmentsOf(info.UID); ok {
		t.Fatal("the block outlived its last reference")
	}
}

// coalescedGet is holder's get of name with a coalescing window: answered
// at once, its script left to the store's delay line (no Commit).
func coalescedGet(t *testing.T, f *fixture, name, holder string) v1.Tensor {
	t.Helper()
	got, commit, err := f.st.Get(context.Background(), store.GetParams{Name: name, Holder: holder, WriteBehind: true})
	if err != nil || commit != nil {
		t.Fatalf("coalesced get of %s: commit %v err %v", name, commit != nil, err)
	}
	return got
}

// getAhead is a written-behind get answered at once (within 2 s), inside
// its window; failing says why.
func getAhead(t *testing.T, f *fixture, name, holder, failing string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, commit, err := f.st.Get(ctx, store.GetParams{Name: name, Holder: holder, WriteBehind: true}); err != nil || commit != nil {
		t.Fatalf("%s: commit %v err %v", failing, commit != nil, err)
	}
}

// With a coalescing window the get's script waits for it: a release within
// it cancels both; a reference held longer reaches Redis once it passed.
func TestCoalesceWindow(t *testing.T) {
	const window = 300 * time.Millisecond
	f, _ := withTensor(t, store.WithCoalesce(window))
	ctx := context.Background()
	coalescedGet(t, f, "w", lease)
	start := time.Now()
	releaseAtOnce(t, f, "w", lease)
	if waited := time.Since(start); waited >= window/2 {
		t.Fatalf("the release took %v: it waited for the get's script instead of cancelling it", waited)
	}
	time.Sleep(2 * window)
	if holders, _ := f.reg.Holders(ctx, "w"); len(holders) != 1 {
		t.Fatalf("a reference released within the window reached Redis: %v", holders)
	}
	start = time.Now()
	coalescedGet(t, f, "w", lease)
	for {
		holders, _ := f.reg.Holders(ctx, "w")
		if holders[lease] == 1 {
			break
		}
		if time.Since(start) > 10*window {
			t.Fatalf("a reference held past the window is not in Redis: %v", holders)
		}
		time.Sleep(window / 20)
	}
	if waited := time.Since(start); waited < window {
		t.Fatalf("the get's script ran after %v, inside the window", waited)
	}
	// The line's turns all ended: a delete does not wait for any.
	if _, err := f.st.Release(ctx, store.ReleaseParams{Name: "w", Holder: lease, Count: registry.AllRefs}); err != nil {
		t.Fatal(err)
	}
	del := result(func() error { _, err := f.st.Delete(ctx, "w", "", nil); return err })
	select {
	case err := <-del:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the delete waited: a turn of the delay line never ended")
	}
}

// A get with WakeAfterAnswer that opens an empty window leaves waking the
// window's goroutine to AfterAnswer: until then its script does not run,
// even past the window; once called, it runs.
func TestWakeAfterAnswerWakesTheWindow(t *testing.T) {
	const window = 50 * time.Millisecond
	f, _ := withTensor(t, store.WithCoalesce(window))
	ctx := context.Background()
	if _, commit, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: lease, WriteBehind: true, WakeAfterAnswer: true}); err != nil || commit != nil {
		t.Fatalf("coalesced get: commit %v err %v", commit != nil, err)
	}
	time.Sleep(4 * window)
	if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 0 {
		t.Fatalf("the get's script ran before AfterAnswer: %v", holders)
	}
	f.st.AfterAnswer()
	f.st.AfterAnswer() // a second call has nothing to wake
	deadline := time.Now().Add(10 * time.Second)
	for {
		holders, _ := f.reg.Holders(ctx, "w")
		if holders[lease] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the get's reference never reached Redis after AfterAnswer: %v", holders)
		}
		time.Sleep(window / 5)
	}
}

// Many gets released within their window leave nothing behind: no script
// reached Redis and the name's turns all ended.
func TestCoalescedPairsLeaveNoTurns(t *testing.T) {
	f, _ := withTensor(t, store.WithCoalesce(20*time.Millisecond))
	ctx := context.Background()
	for i := 0; i < 500; i++ {
		coalescedGet(t, f, "w", lease)
		releaseAtOnce(t, f, "w", lease)
	}
	time.Sleep(100 * time.Millisecond)
	if holders, _ := f.reg.Holders(ctx, "w"); len(holders) != 1 {
		t.Fatalf("coalesced references reached Redis: %v", holders)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if rec, err := f.st.Stat(sctx, "w"); err != nil || rec.Refcount != 1 {
		t.Fatalf("stat waits for the name's turns: %+v %v", rec, err)
	}
}

// Pairs released inside the window end their turns at the release, not when
// the window passes: however long the window, a popular name's gets never
// pile up past the bound on scripts behind (and fall back to waiting for
// Redis) because of references already gone.
func TestCancelledPairsLeaveTheBound(t *testing.T) {
	f, _ := withTensor(t, store.WithCoalesce(time.Hour))
	ctx := context.Background()
	for i := 0; i < 1000; i++ {
		getAhead(t, f, "w", lease, fmt.Sprintf("get %d waited for the turns of released gets", i))
		if i%100 == 0 {
			if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 0 {
				t.Fatalf("get %d reached Redis before its answer: %v", i, holders)
			}
		}
		releaseAtOnce(t, f, "w", lease)
	}
	if n := f.st.QueuedTurns("w"); n != 0 {
		t.Fatalf("%d turns left after every pair was released", n)
	}
}

// A get still in its window (its holder keeps the tensor) heads the name's
// turns; the pairs of other holders released behind it run no script, so
// they do not count against the bound on scripts behind: however many come
// while it waits, a popular name's gets keep being answered at once instead
// of waiting for that one get's window.
func TestCancelledPairsBehindAPendingGetLeaveTheBound(t *testing.T) {
	f, _ := withTensor(t, store.WithCoalesce(time.Hour))
	ctx := context.Background()
	const keeper = "conn:inst1:99"
	coalescedGet(t, f, "w", keeper)
	for i := 0; i < 1000; i++ {
		getAhead(t, f, "w", lease, fmt.Sprintf("get %d behind a pending get waited for it", i))
		releaseAtOnce(t, f, "w", lease)
	}
	if n := f.st.BehindScripts("w"); n != 1 {
		t.Fatalf("%d scripts behind, want the pending get's alone", n)
	}
	// Past the bound on turns not ended (their memory) a get waits its
	// turn: here, for the pending get's window.
	store.SetMaxTurns(t, f.st.QueuedTurns("w"))
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, _, err := f.st.Get(wctx, store.GetParams{Name: "w", Holder: lease, WriteBehind: true})
	wcancel()
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("a get past the bound on turns: %v, want it to wait for the pending get and time out", err)
	}
	if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 0 || holders[keeper] != 0 {
		t.Fatalf("references reached Redis inside the window: %v", holders)
	}
	// The keeper's release cancels its get too; every turn then ends.
	releaseAtOnce(t, f, "w", keeper)
	if n := f.st.QueuedTurns("w"); n != 0 {
		t.Fatalf("%d turns left after every pair was released", n)
	}
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	if rec, err := f.st.Stat(sctx, "w"); err != nil || rec.Refcount != 1 {
		t.Fatalf("stat after the pairs: %+v %v", rec, err)
	}
}

// FlushBehind writes the references still in their window at once, before a
// hand-over or a stop.
func TestFlushBehindWritesTheWindow(t *testing.T) {
	f, _ := withTensor(t, store.WithCoalesce(time.Hour))
	ctx := context.Background()
	coalescedGet(t, f, "w", lease)
	coalescedGet(t, f, "w", "conn:inst1:2")
	if holders, _ := f.reg.Holders(ctx, "w"); len(holders) != 1 {
		t.Fatalf("references reached Redis inside the window: %v", holders)
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := f.st.FlushBehind(fctx); err != nil {
		t.Fatal(err)
	}
	if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 1 || holders["conn:inst1:2"] != 1 {
		t.Fatalf("after the flush Redis has %v", holders)
	}
}

// A connection's release of a live tensor is answered before its script,
// and a get behind it need not wait for it: neither can free the tensor.
func TestReleaseBehindOfALiveTensor(t *testing.T) {
	f := newFixture(t, store.WithWriteBehind(true))
	ctx := context.Background()
	info, commit := earlyCreate(t, f, "w")
	commit(ctx)
	res, rc, err := f.st.ReleaseBehind(ctx, store.ReleaseParams{Name: "w", Holder: lease, Count: registry.AllRefs})
	if err != nil || rc == nil || res.Freed || res.UID != info.UID || res.Refcount != 1 {
		t.Fatalf("release behind: %+v commit %v err %v", res, rc != nil, err)
	}
	if holders, _ := f.reg.Holders(ctx, "w"); holders[lease] != 1 {
		t.Fatalf("the release reached Redis before its commit: %v", holders)
	}
	other := "conn:inst1:2"
	got, gc := earlyGet(t, f, "w", other)
	if got.Refcount != 2 {
		t.Fatalf("get behind the release: %+v", got)
	}
	// The get's script waits for the release's, in the order answered.
	gdone := result(func() error { gc(ctx); return nil })
	pending(t, gdone, "the get's script")
	rc(ctx)
	<-gdone
	holders, _ := f.reg.Holders(ctx, "w")
	if _, ok := holders[lease]; ok || holders[other] != 1 || len(holders) != 2 {
		t.Fatalf("holders after both scripts %v", holders)
	}
	if rec, _ := f.reg.Stat(ctx, "w"); rec.Refcount != 2 {
		t.Fatalf("refcount %d", rec.Refcount)
	}
	// Once deleted, the last release frees at once and in its own turn.
	if _, err := f.st.Delete(ctx, "w", "", nil); err != nil {
		t.Fatal(err)
	}
	res, rc, err = f.st.ReleaseBehind(ctx, store.ReleaseParams{Name: "w", Holder: other, Count: registry.AllRefs})
	if err != nil || rc != nil || !res.Freed {
		t.Fatalf("last release of a deleted tensor: %+v commit %v err %v", res, rc != nil, err)
	}
	if _, ok := f.st.SegmentsOf(info.UID); ok {
		t.Fatal("the block outlived its last reference")
	}
	// A release right after a create waits for the create's record: from
	// its answer on, the tensor is in Redis and survives the agent.
	_, cc := earlyCreate(t, f, "v")
	var behind bool
	rel := result(func() error {
		_, c, err := f.st.ReleaseBehind(ctx, store.ReleaseParams{Name: "v", Holder: lease, Count: registry.AllRefs})
		behind = c != nil
		return err
	})
	pending(t, rel, "a release behind an unwritten create")
	cc(ctx)
	if err := <-rel; err != nil || behind {
		t.Fatalf("release after the create's script: behind %v err %v", behind, err)
	}
	if rec, err := f.reg.Stat(ctx, "v"); err != nil || rec.Refcount != 1 {
		t.Fatalf("v in Redis: %+v %v", rec, err)
	}
}

// Requests answered ahead of their scripts are bounded per name: past the
// bound a get waits its turn, so Redis never falls far behind.
func TestWriteBehindIsBoundedPerName(t *testing.T) {
	f, _ := withTensor(t)
	ctx := context.Background()
	var commits []store.Commit
	for i := 0; ; i++ {
		if i > 10000 {
			t.Fatal("10,000 gets of one name answered ahead of their scripts: no bound")
		}
		holder := fmt.Sprintf("conn:inst1:%d", i+10)
		var c store.Commit
		ch := result(func() (err error) {
			_, c, err = f.st.Get(ctx, store.GetParams{Name: "w", Holder: holder, WriteBehind: true})
			return err
		})
		select {
		case err := <-ch:
			if err != nil || c == nil {
				t.Fatalf("get %d: commit %v err %v", i, c != nil, err)
			}
			commits = append(commits, c)
			continue
		case <-time.After(100 * time.Millisecond):
		}
		if len(commits) < 8 {
			t.Fatalf("only %d gets were answered ahead of their scripts", len(commits))
		}
		for _, c := range commits {
			c(ctx)
		}
		if err := <-ch; err != nil || c != nil {
			t.Fatalf("the get past the bound: commit %v err %v", c != nil, err)
		}
		if rec, _ := f.reg.Stat(ctx, "w"); rec.Refcount != int64(len(commits))+2 {
			t.Fatalf("refcount %d after %d gets", rec.Refcount, len(commits)+1)
		}
		return
	}
}
