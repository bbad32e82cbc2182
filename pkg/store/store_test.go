package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

type fixture struct {
	st  *store.Store
	be  *host.Backend
	reg *registry.Registry
	dir string
	srv *redistest.Server
}

func newFixture(t *testing.T, opts ...store.Option) *fixture {
	t.Helper()
	srv := redistest.Start(t)
	reg := registry.New(srv.Client(), registry.Keys{Prefix: "t:", Node: "n1"})
	if err := reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	be := host.New("t:", "inst1", host.WithDir(dir))
	st := store.New(reg, be, "inst1", "n1", opts...)
	t.Cleanup(func() { st.Close() })
	if _, err := st.Adopt(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return &fixture{st: st, be: be, reg: reg, dir: dir, srv: srv}
}

func (f *fixture) segment(t *testing.T, info v1.Tensor) *host.Segment {
	segs, ok := f.st.SegmentsOf(info.UID)
	if !ok {
		t.Fatalf("no segment for %s", info.Name)
	}
	return segs[0].(*host.Segment)
}

func TestCreateGetReleaseDelete(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	info, _, err := f.st.Create(ctx, store.CreateParams{Name: "w", DType: "float32", Shape: []int64{2, 3}, OwnerPID: 7})
	if err != nil {
		t.Fatal(err)
	}
	if info.Refcount != 1 || info.Bytes != 24 || info.DType != v1.F32 || info.IPCMode != v1.ModeHost || info.OwnerPID != 7 {
		t.Fatalf("created %+v", info)
	}
	if _, err := os.Stat(filepath.Join(f.dir, info.SegmentID)); err != nil {
		t.Fatalf("segment object missing: %v", err)
	}
	// Same dtype (another alias) and shape: the existing tensor, no new reference.
	again, _, err := f.st.Create(ctx, store.CreateParams{Name: "w", DType: "torch.float32", Shape: []int64{2, 3}})
	if err != nil || again.UID != info.UID || again.Refcount != 1 {
		t.Fatalf("create existing: %+v %v", again, err)
	}
	for _, bad := range []store.CreateParams{
		{Name: "w", DType: "f16", Shape: []int64{2, 3}},
		{Name: "w", DType: "f32", Shape: []int64{3, 2}},
	} {
		if _, _, err := f.st.Create(ctx, bad); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Fatalf("create %+v over existing: %v", bad, err)
		}
	}
	got, _, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: "pid:1:1"})
	if err != nil || got.Refcount != 2 || got.Offset != info.Offset {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := f.st.Delete(ctx, "w", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: "pid:2:2"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "w", DType: "f32", Shape: []int64{2, 3}}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("re-create while a deleted tensor is still referenced: %v", err)
	}
	if n := f.st.Stats().Tensors; n != 1 {
		t.Fatalf("tensors %d, want 1 until the last reference goes", n)
	}
	res, err := f.st.Release(ctx, store.ReleaseParams{Name: "w", Holder: "pid:1:1", Count: 1})
	if err != nil || !res.Freed {
		t.Fatalf("last release: %+v %v", res, err)
	}
	if st := f.st.Stats(); st.Tensors != 0 || st.Pools[0].Allocated != 0 {
		t.Fatalf("after free: %+v", st)
	}
}

func TestValidation(t *testing.T) {
	f := newFixture(t, store.WithDeviceLimit(1<<20))
	ctx := context.Background()
	for _, tc := range []struct {
		p    store.CreateParams
		code string
	}{
		{store.CreateParams{Name: "", DType: "f32"}, errdefs.CodeInvalidArgument},
		{store.CreateParams{Name: "a b", DType: "f32"}, errdefs.CodeInvalidArgument},
		{store.CreateParams{Name: "x", DType: "complex"}, errdefs.CodeInvalidArgument},
		{store.CreateParams{Name: "x", DType: "f32", Shape: []int64{-1}}, errdefs.CodeInvalidArgument},
		{store.CreateParams{Name: "x", DType: "f32", Shape: []int64{1 << 20}}, errdefs.CodeInvalidArgument}, // over the 1 MiB limit
		{store.CreateParams{Name: "x", DType: "f32", Shape: []int64{1}, Device: "1"}, errdefs.CodeInvalidArgument},
		{store.CreateParams{Name: "x", DType: "f32", Shape: []int64{1}, Device: "GPU-nope"}, errdefs.CodeInvalidArgument},
	} {
		if _, _, err := f.st.Create(ctx, tc.p); errdefs.Code(err) != tc.code {
			t.Errorf("Create(%+v) = %v, want %s", tc.p, err, tc.code)
		}
	}
	// 600 KiB fits the 1 MiB limit once; the second needs a new segment over the limit.
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "a", DType: "u8", Shape: []int64{600 << 10}}); err != nil {
		t.Fatal(err)
	}
	pools := f.st.Stats().Pools
	if pools[0].Reserved > 1<<20 {
		t.Fatalf("reserved %d over the limit", pools[0].Reserved)
	}
	if n := f.st.Stats().Tensors; n != 1 {
		t.Fatalf("failed creates left %d tensors", n)
	}
	names, _ := f.reg.Names(ctx)
	if len(names) != 1 {
		t.Fatalf("failed creates left records %v", names)
	}
}

func TestZeroFillOnReuse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, _, err := f.st.Create(ctx, store.CreateParams{Name: "a", DType: "u8", Shape: []int64{4096}})
	if err != nil {
		t.Fatal(err)
	}
	seg := f.segment(t, a)
	mem := seg.Bytes()[a.Offset : a.Offset+a.Bytes]
	for i := range mem {
		mem[i] = 0xAB
	}
	if _, err := f.st.Delete(ctx, "a", "", nil); err != nil {
		t.Fatal(err)
	}
	b, _, err := f.st.Create(ctx, store.CreateParams{Name: "b", DType: "u8", Shape: []int64{4096}})
	if err != nil {
		t.Fatal(err)
	}
	if b.SegmentID != a.SegmentID || b.Offset != a.Offset {
		t.Fatalf("b did not reuse a's block (%s@%d vs %s@%d)", b.SegmentID, b.Offset, a.SegmentID, a.Offset)
	}
	for i, v := range f.segment(t, b).Bytes()[b.Offset : b.Offset+b.Bytes] {
		if v != 0 {
			t.Fatalf("byte %d of a reused block is %#x: old data leaked", i, v)
		}
	}
}

func TestConcurrentCreateSameName(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	uids := make([]string, 16)
	errs := make([]error, 16)
	for i := range uids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			info, _, err := f.st.Create(ctx, store.CreateParams{Name: "shared", DType: "f16", Shape: []int64{1024}, Holder: f.st.OpenLease()})
			uids[i], errs[i] = info.UID, err
		}(i)
	}
	wg.Wait()
	for i := range uids {
		if errs[i] != nil || uids[i] != uids[0] {
			t.Fatalf("racer %d: uid %s err %v, want all to share %s", i, uids[i], errs[i], uids[0])
		}
	}
	info, _ := f.reg.Stat(ctx, "shared")
	if info.Refcount != 17 {
		t.Fatalf("refcount %d, want 1 registry + 16 leases", info.Refcount)
	}
	if st := f.st.Stats(); st.Tensors != 1 || st.Pools[0].ActiveBlocks != 1 {
		t.Fatalf("losing racers leaked blocks: %d tensors, %d blocks", st.Tensors, st.Pools[0].ActiveBlocks)
	}
}

func TestLeasesAndGC(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "t", DType: "f32", Shape: []int64{8}}); err != nil {
		t.Fatal(err)
	}
	lease := f.st.OpenLease()
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "t", Holder: lease}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "t", Holder: lease}); err != nil {
		t.Fatal(err)
	}
	// A process that took a reference and died.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	holder, err := store.PIDHolder(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "t", Holder: holder}); err != nil {
		t.Fatal(err)
	}
	if res, _ := f.st.GC(ctx); res.Holders != 0 {
		t.Fatalf("GC dropped %d live holders", res.Holders)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if held, _ := f.reg.HeldBy(ctx, registry.KindPID); len(held) != 1 || held[0] != "t" {
		t.Fatalf("names held by pids: %v, want [t]", held)
	}
	res, err := f.st.GC(ctx)
	if err != nil || res.Holders != 1 {
		t.Fatalf("GC: %+v %v, want the dead pid dropped", res, err)
	}
	if held, _ := f.reg.HeldBy(ctx, registry.KindPID); len(held) != 0 {
		t.Fatalf("names held by pids after GC: %v, want none (GC reads only these)", held)
	}
	info, _ := f.reg.Stat(ctx, "t")
	if info.Refcount != 3 {
		t.Fatalf("refcount %d, want registry + 2 lease refs", info.Refcount)
	}
	// Closing the lease while Redis is down fails; GC drops it once Redis is back.
	f.srv.Stop()
	if err := f.st.CloseLease(ctx, lease, []string{"t"}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("CloseLease with Redis down: %v", err)
	}
	f.srv.Restart()
	res, err = f.st.GC(ctx)
	if err != nil || res.Holders != 1 {
		t.Fatalf("GC after Redis came back: %+v %v", res, err)
	}
	info, _ = f.reg.Stat(ctx, "t")
	if info.Refcount != 1 {
		t.Fatalf("refcount %d after GC, want 1", info.Refcount)
	}
	if _, err := store.PIDHolder(cmd.Process.Pid, 0); err == nil {
		t.Fatal("PIDHolder of a dead process succeeded")
	}
}

func TestAdoptRemovesWhatDidNotSurvive(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "mine", DType: "f32", Shape: []int64{1}}); err != nil {
		t.Fatal(err)
	}
	// A record of a dead predecessor whose shared-memory object is gone,
	// and an index entry with no record.
	old := v1.Tensor{Name: "old", UID: "dead-1", DType: v1.F32, Shape: []int64{1}, Bytes: 4, State: v1.StateReady, Agent: "dead", Node: "n1",
		IPCMode: v1.ModeHost, SegmentID: "memcuda." + host.Scope("t:") + ".dead.1", SegmentSize: 2 << 20}
	if _, err := f.reg.Create(ctx, old, "", ""); err != nil {
		t.Fatal(err)
	}
	f.reg.Client().ZAdd(ctx, f.reg.Keys().Index(), redisZ("ghost"))
	var lost []string
	next := store.New(f.reg, host.New("t:", "inst2", host.WithDir(f.dir)), "inst2", "n1",
		store.WithLost(func(rec v1.Tensor, _ map[string]int64, _ string) { lost = append(lost, rec.Name) }))
	rep, err := next.Adopt(ctx, nil)
	if err != nil || rep.Removed != 1 || rep.Adopted != 1 {
		t.Fatalf("adopt: %+v, %v; want mine adopted, old removed", rep, err)
	}
	if len(lost) != 1 || lost[0] != "old" {
		t.Fatalf("lost %v, want [old]", lost)
	}
	names, _ := f.reg.Names(ctx)
	if len(names) != 1 || names[0] != "mine" {
		t.Fatalf("left %v", names)
	}
	if _, _, err := next.Get(ctx, store.GetParams{Name: "old", Holder: "pid:1:1"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get of a removed record: %v", err)
	}
}

// A new instance on the same shared memory (after a crash: the first store
// is never closed) adopts every tensor: same uid, offset and bytes, the
// same refcounts and holders; a client of the old instance reattaches its
// connection's reference, and the grace's end drops the references nobody
// reattached.
func TestAdoptTakesOverHostSegments(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	conn := f.st.OpenLease()
	gone := f.st.OpenLease()
	var made []v1.Tensor
	for i, n := range []int64{100, 300 << 10, 5 << 20, 64 << 20, 7} {
		info, _, err := f.st.Create(ctx, store.CreateParams{Name: fmt.Sprintf("t%d", i), DType: "u8", Shape: []int64{n}})
		if err != nil {
			t.Fatal(err)
		}
		data := f.segment(t, info).Bytes()[info.Offset : info.Offset+info.Bytes]
		for j := range data {
			data[j] = byte(i + j)
		}
		made = append(made, info)
	}
	// t1: held by a pid and the connection that will reattach; t2 deleted
	// but held by a connection that never comes back; a gap where "gap" was.
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "t1", Holder: "pid:1:1"}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []struct{ name, holder string }{{"t1", conn}, {"t2", gone}} {
		if _, _, err := f.st.Get(ctx, store.GetParams{Name: g.name, Holder: g.holder}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.st.Delete(ctx, "t2", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "gap", DType: "u8", Shape: []int64{1000}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Delete(ctx, "gap", "", nil); err != nil {
		t.Fatal(err)
	}

	be := host.New("t:", "inst2", host.WithDir(f.dir))
	next := store.New(f.reg, be, "inst2", "n1")
	defer next.Close()
	rep, err := next.Adopt(ctx, nil)
	if err != nil || rep.Adopted != len(made) || rep.Removed != 0 {
		t.Fatalf("adopt: %+v, %v; want all %d adopted", rep, err, len(made))
	}
	for i, want := range made {
		rec, err := next.Stat(ctx, want.Name)
		if err != nil || rec.UID != want.UID || rec.Agent != "inst2" || rec.Offset != want.Offset || rec.SegmentID != want.SegmentID {
			t.Fatalf("record of %s after adoption: %+v %v", want.Name, rec, err)
		}
		segs, ok := next.SegmentsOf(want.UID)
		if !ok {
			t.Fatalf("no memory for %s after adoption", want.Name)
		}
		data := segs[0].(*host.Segment).Bytes()[want.Offset : want.Offset+want.Bytes]
		for j := range data {
			if data[j] != byte(i+j) {
				t.Fatalf("%s byte %d is %d after adoption, want %d", want.Name, j, data[j], byte(i+j))
			}
		}
	}
	if st := next.Stats(); st.Tensors != len(made) {
		t.Fatalf("adopted store counts %d tensors, want %d", st.Tensors, len(made))
	}
	// The new instance serves the adopted tensors and carves new ones
	// around them.
	if _, _, err := next.Get(ctx, store.GetParams{Name: "t0", Holder: "pid:2:2"}); err != nil {
		t.Fatal(err)
	}
	fresh, _, err := next.Create(ctx, store.CreateParams{Name: "new", DType: "u8", Shape: []int64{1000}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range made {
		if fresh.SegmentID == m.SegmentID && fresh.Offset < m.Offset+m.Bytes && m.Offset < fresh.Offset+fresh.Bytes {
			t.Fatalf("new tensor at %d overlaps adopted %s at [%d,+%d)", fresh.Offset, m.Name, m.Offset, m.Bytes)
		}
	}
	// Reattach: the connection's reference moves, the refcount stays.
	lease := next.OpenLease()
	before, _ := f.reg.Stat(ctx, "t1")
	got, err := next.Reattach(ctx, "t1", conn, lease)
	if err != nil || got.Refcount != before.Refcount {
		t.Fatalf("reattach: %+v %v; refcount was %d", got, err, before.Refcount)
	}
	holders, _ := f.reg.Holders(ctx, "t1")
	if holders[conn] != 0 || holders[lease] != 1 || holders["pid:1:1"] != 1 {
		t.Fatalf("holders after reattach: %v", holders)
	}
	if _, err := next.Reattach(ctx, "t1", next.OpenLease(), lease); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("reattach of a live connection of this instance: %v", err)
	}
	if err := next.EndGrace(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Stat(ctx, "t2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("t2 (deleted, held by a connection that never came back) after the grace: %v", err)
	}
	if holders, _ := f.reg.Holders(ctx, "t1"); holders[lease] != 1 || holders["pid:1:1"] != 1 {
		t.Fatalf("the grace dropped reattached or pid references: %v", holders)
	}
}

func TestTrimAndStats(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "big", DType: "u8", Shape: []int64{32 << 20}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Delete(ctx, "big", "", nil); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(f.dir)
	if len(entries) != 1 {
		t.Fatalf("%d segment objects, want the cached one", len(entries))
	}
	n, err := f.st.Trim()
	if err != nil || n != 32<<20 {
		t.Fatalf("trim %d %v", n, err)
	}
	entries, _ = os.ReadDir(f.dir)
	if len(entries) != 0 {
		t.Fatalf("trim left %d objects", len(entries))
	}
}

type fakeFence struct {
	done     bool
	released int
}

func (f *fakeFence) Done() bool { return f.done }
func (f *fakeFence) Release()   { f.released++ }

func TestFencedReleaseDefersReuse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, _, err := f.st.Create(ctx, store.CreateParams{Name: "a", DType: "u8", Shape: []int64{4096}})
	if err != nil {
		t.Fatal(err)
	}
	lease := f.st.OpenLease()
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "a", Holder: lease}); err != nil {
		t.Fatal(err)
	}
	fence := &fakeFence{}
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "a", Holder: lease}); err != nil {
		t.Fatal(err)
	}
	// The same fence twice (an event re-recorded): attached once, the extra
	// reference released at once.
	for i := 0; i < 2; i++ {
		if _, err := f.st.Release(ctx, store.ReleaseParams{Name: "a", Holder: lease, Count: 1, Fence: fence}); err != nil {
			t.Fatal(err)
		}
	}
	if fence.released != 1 {
		t.Fatalf("fence released %d times after a duplicate attach, want 1", fence.released)
	}
	if _, err := f.st.Delete(ctx, "a", "", nil); err != nil {
		t.Fatal(err)
	}
	if f.st.Pending() != 1 {
		t.Fatalf("pending %d: a block whose GPU work is not done was freed", f.st.Pending())
	}
	b, _, err := f.st.Create(ctx, store.CreateParams{Name: "b", DType: "u8", Shape: []int64{4096}})
	if err != nil {
		t.Fatal(err)
	}
	if b.SegmentID == a.SegmentID && b.Offset == a.Offset {
		t.Fatal("a fenced block was reused before its fence was done")
	}
	fence.done = true
	if n := f.st.ReapPending(); n != 0 || fence.released != 2 {
		t.Fatalf("after the fence: %d pending, fence released %d times", n, fence.released)
	}
	c, _, err := f.st.Create(ctx, store.CreateParams{Name: "c", DType: "u8", Shape: []int64{4096}})
	if err != nil {
		t.Fatal(err)
	}
	if c.SegmentID != a.SegmentID || c.Offset != a.Offset {
		t.Fatalf("the reaped block was not reused (c at %d, a was at %d)", c.Offset, a.Offset)
	}
}

// A queue get replayed after the agent crashed (its request id already
// applied, the tensor reconciled away) is not_found, not internal.
func TestReplayedGetAfterACrashIsNotFound(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, _, err := f.st.Create(ctx, store.CreateParams{Name: "w", DType: "f32", Shape: []int64{4}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.Get(ctx, store.GetParams{Name: "w", Holder: "pid:1:1", ReqID: "g1"}); err != nil {
		t.Fatal(err)
	}
	next := store.New(f.reg, host.New("t:", "inst2", host.WithDir(t.TempDir())), "inst2", "n1")
	defer next.Close()
	if _, err := next.Adopt(ctx, nil); err != nil {
		t.Fatal(err)
	}
	_, _, err := next.Get(ctx, store.GetParams{Name: "w", Holder: "pid:1:1", ReqID: "g1"})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("replayed get: %v, want not found", err)
	}
	// The same with the name re-created by the new instance meanwhile: the
	// request is a replay of the old tensor's get, its record now another's.
	if _, _, err := next.Create(ctx, store.CreateParams{Name: "w", DType: "f32", Shape: []int64{4}}); err != nil {
		t.Fatal(err)
	}
	if info, _, err := next.Get(ctx, store.GetParams{Name: "w", Holder: "pid:1:1", ReqID: "g1"}); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("replayed get after a re-create: %+v %v", info, err)
	}
}
