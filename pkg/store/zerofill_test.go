package store_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/backend/host"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
	"github.com/memcuda/memcuda/pkg/store"
)

// queuedFill is the host backend with the GPU backends' queued zero-fill:
// the fill happens when wait is called, and wait can fail.
type queuedFill struct {
	*host.Backend
	waits atomic.Int32
	fail  atomic.Pointer[error]
}

type queuedSegment struct {
	backend.Segment
	b *queuedFill
}

func (q *queuedFill) NewSegment(ctx context.Context, device int, size uint64) (backend.Segment, error) {
	seg, err := q.Backend.NewSegment(ctx, device, size)
	if err != nil {
		return nil, err
	}
	return queuedSegment{seg, q}, nil
}

func (s queuedSegment) ZeroAsync(ctx context.Context, off, n uint64) (func() error, error) {
	return func() error {
		s.b.waits.Add(1)
		if e := s.b.fail.Load(); e != nil {
			return *e
		}
		return s.Segment.Zero(ctx, off, n)
	}, nil
}

func TestQueuedZeroFill(t *testing.T) {
	srv := redistest.Start(t)
	reg := registry.New(srv.Client(), registry.Keys{Prefix: "t:", Node: "n1"})
	ctx := context.Background()
	if err := reg.Load(ctx); err != nil {
		t.Fatal(err)
	}
	be := &queuedFill{Backend: host.New("t:", "inst1", host.WithDir(t.TempDir()))}
	st := store.New(reg, be, "inst1", "n1")
	t.Cleanup(func() { st.Close() })

	a, err := st.Create(ctx, store.CreateParams{Name: "a", DType: "u8", Shape: []int64{4096}, Holder: "conn:1"})
	if err != nil {
		t.Fatal(err)
	}
	if n := be.waits.Load(); n != 1 {
		t.Fatalf("create returned after %d waits for its fill, want 1", n)
	}
	boom := errors.New("device lost")
	be.fail.Store(&boom)
	if _, err := st.Create(ctx, store.CreateParams{Name: "b", DType: "u8", Shape: []int64{4096}, Holder: "conn:1"}); err == nil || !errors.Is(err, boom) {
		t.Fatalf("create with a failed fill: %v, want the fill's error", err)
	}
	if _, err := reg.Stat(ctx, "b"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a create whose fill failed left a record: %v", err)
	}
	if holders, _ := reg.Holders(ctx, "b"); len(holders) != 0 {
		t.Fatalf("a create whose fill failed left holders %v", holders)
	}
	be.fail.Store(nil)
	b, err := st.Create(ctx, store.CreateParams{Name: "b", DType: "u8", Shape: []int64{4096}})
	if err != nil {
		t.Fatalf("the name is not free after a failed fill: %v", err)
	}
	if b.Refcount != 1 {
		t.Fatalf("recreated %+v", b)
	}
	if got, err := st.Get(ctx, "a", "conn:2", ""); err != nil || got.Refcount != 3 || got.UID != a.UID {
		t.Fatalf("get after create: %+v %v", got, err)
	}
}
