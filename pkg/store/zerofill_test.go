package store_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

// queuedZero is the host backend with the GPU backends' queued zero-fill:
// the fill happens once, at the first wait for it; waits fail while fail
// is set, and block while gate holds a channel, until it is closed.
type queuedZero struct {
	*host.Backend
	waits atomic.Int32
	fail  atomic.Pointer[error]
	gate  atomic.Pointer[chan struct{}]
}

type queuedSegment struct {
	backend.Segment
	b *queuedZero
}

func (q *queuedZero) NewSegment(ctx context.Context, device int, size uint64) (backend.Segment, error) {
	seg, err := q.Backend.NewSegment(ctx, device, size)
	if err != nil {
		return nil, err
	}
	return queuedSegment{seg, q}, nil
}

func (s queuedSegment) ZeroAsync(ctx context.Context, off, n uint64) (func() error, error) {
	var once sync.Once
	var err error
	return func() error {
		s.b.waits.Add(1)
		if g := s.b.gate.Load(); g != nil {
			<-*g
		}
		if e := s.b.fail.Load(); e != nil {
			return *e
		}
		once.Do(func() { err = s.Segment.Zero(ctx, off, n) })
		return err
	}, nil
}

// Free memory is zero-filled when it is freed (and segments when they are
// made), on the device's queue: a create waits only for zero-fills still queued,
// and a failed zero-fill fails the create that needs it and leaves no record.
func TestQueuedZeroFill(t *testing.T) {
	srv := redistest.Start(t)
	reg := registry.New(srv.Client(), registry.Keys{Prefix: "t:", Node: "n1"})
	ctx := context.Background()
	if err := reg.Load(ctx); err != nil {
		t.Fatal(err)
	}
	be := &queuedZero{Backend: host.New("t:", "inst1", host.WithDir(t.TempDir()))}
	st := store.New(reg, be, "inst1", "n1")
	t.Cleanup(func() { st.Close() })

	small := store.CreateParams{Name: "a", DType: "u8", Shape: []int64{4096}, Holder: "conn:1"}
	a, _, err := st.Create(ctx, small)
	if err != nil {
		t.Fatal(err)
	}
	if n := be.waits.Load(); n != 1 {
		t.Fatalf("the first create waited for %d zero-fills, want 1 (its new segment's)", n)
	}
	small.Name = "a2"
	if _, _, err := st.Create(ctx, small); err != nil {
		t.Fatal(err)
	}
	if n := be.waits.Load(); n != 1 {
		t.Fatalf("a create from zero-filled free memory waited for %d zero-fills, want none more", n)
	}
	// A large tensor gets a segment of its own, whose zero-fill fails.
	boom := errors.New("device lost")
	be.fail.Store(&boom)
	large := store.CreateParams{Name: "b", DType: "u8", Shape: []int64{64 << 20}, Holder: "conn:1"}
	if _, _, err := st.Create(ctx, large); err == nil || !errors.Is(err, boom) {
		t.Fatalf("create with a failed zero-fill: %v, want the zero-fill's error", err)
	}
	if _, err := reg.Stat(ctx, "b"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a create whose zero-fill failed left a record: %v", err)
	}
	if holders, _ := reg.Holders(ctx, "b"); len(holders) != 0 {
		t.Fatalf("a create whose zero-fill failed left holders %v", holders)
	}
	be.fail.Store(nil)
	large.Holder = ""
	b, _, err := st.Create(ctx, large)
	if err != nil {
		t.Fatalf("the name is not free after a failed zero-fill: %v", err)
	}
	if b.Refcount != 1 {
		t.Fatalf("recreated %+v", b)
	}
	if got, _, err := st.Get(ctx, store.GetParams{Name: "a", Holder: "conn:2"}); err != nil || got.Refcount != 3 || got.UID != a.UID {
		t.Fatalf("get after create: %+v %v", got, err)
	}
	// Freeing queues a zero-fill, which the device's watcher waits for:
	// the next create from that memory finds it done and waits for nothing.
	before := be.waits.Load()
	free := func(name string, holders ...string) {
		t.Helper()
		for _, h := range holders {
			if _, err := st.Release(ctx, store.ReleaseParams{Name: name, Holder: h, Count: registry.AllRefs}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.Delete(ctx, name, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	free("a", "conn:1", "conn:2")
	for deadline := time.Now().Add(10 * time.Second); be.waits.Load() == before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no watcher waited for the zero-fill of a freed block")
		}
	}
	small.Name = "c"
	c, _, err := st.Create(ctx, small)
	if err != nil {
		t.Fatal(err)
	}
	if c.SegmentID != a.SegmentID || c.Offset != a.Offset {
		t.Fatalf("c did not reuse a's block")
	}
	if n := be.waits.Load() - before; n != 1 {
		t.Fatalf("a create of a freed block whose fill the watcher saw done waited %d times in all, want the watcher's 1", n)
	}

	// A fill still running when the create comes: the create waits for it.
	gate := make(chan struct{})
	be.gate.Store(&gate)
	free("c", "conn:1")
	small.Name = "d"
	created := make(chan error, 1)
	go func() {
		_, _, err := st.Create(ctx, small)
		created <- err
	}()
	select {
	case err := <-created:
		t.Fatalf("a create returned (%v) while the zero-fill of its block was still running", err)
	case <-time.After(100 * time.Millisecond):
	}
	be.gate.Store(nil)
	close(gate)
	if err := <-created; err != nil {
		t.Fatal(err)
	}
}
