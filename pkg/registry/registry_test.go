package registry_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/internal/redistest"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/registry"
)

func newRegistry(t *testing.T) *registry.Registry {
	srv := redistest.Start(t)
	r := registry.New(srv.Client(), registry.Keys{Prefix: "t:", Node: "n1"})
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

func record(name string) v1.Tensor {
	now := time.Now().UnixMilli()
	return v1.Tensor{
		Name: name, UID: name + "-uid", DType: v1.F32, Shape: []int64{2, 3}, Bytes: 24,
		IPCMode: v1.ModeHost, IPCHandle: "/memcuda.x.1", Offset: 512, SegmentID: "seg1", SegmentSize: 2 << 20,
		OwnerPID: 42, State: v1.StateReady, Agent: "inst1", Node: "n1", Ctime: now, Mtime: now,
	}
}

func TestCreateAcquireReleaseLifecycle(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	res, err := r.Create(ctx, record("w"), "", "")
	if err != nil || !res.Created {
		t.Fatalf("create: %+v %v", res, err)
	}
	if res.Info.Refcount != 1 || res.Info.Shape[1] != 3 || res.Info.Offset != 512 {
		t.Fatalf("stored record %+v", res.Info)
	}
	// Same name again: the existing record, no reference taken.
	res, err = r.Create(ctx, record("w"), "", "")
	if err != nil || res.Created || res.Info.Refcount != 1 {
		t.Fatalf("second create: %+v %v", res, err)
	}
	info, err := r.Acquire(ctx, "w", "pid:1:5", "inst1", "", nil)
	if err != nil || info.Refcount != 2 {
		t.Fatalf("acquire: %+v %v", info, err)
	}
	if _, err := r.Acquire(ctx, "w", "pid:1:5", "other-instance", "", nil); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("acquire from a stale instance: %v", err)
	}
	holders, _ := r.Holders(ctx, "w")
	if holders["pid:1:5"] != 1 || holders[registry.HolderRegistry] != 1 {
		t.Fatalf("holders %v", holders)
	}
	// delete drops the registry reference and blocks new gets.
	rel, err := r.Release(ctx, "w", registry.HolderRegistry, 1, true, "")
	if err != nil || rel.Freed || rel.Refcount != 1 {
		t.Fatalf("delete: %+v %v", rel, err)
	}
	if _, err := r.Acquire(ctx, "w", "pid:2:5", "inst1", "", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("acquire after delete: %v", err)
	}
	if _, err := r.Release(ctx, "w", registry.HolderRegistry, 1, true, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := r.Release(ctx, "w", "pid:9:9", 1, false, ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("release by a non-holder: %v", err)
	}
	rel, err = r.Release(ctx, "w", "pid:1:5", 1, false, "")
	if err != nil || !rel.Freed || rel.UID != "w-uid" {
		t.Fatalf("last release: %+v %v", rel, err)
	}
	if _, err := r.Stat(ctx, "w"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("stat after free: %v", err)
	}
	names, _ := r.Names(ctx)
	if len(names) != 0 {
		t.Fatalf("index still lists %v", names)
	}
	n, _ := r.Client().Exists(ctx, r.Keys().Refs("w")).Result()
	if n != 0 {
		t.Fatal("refs hash left behind")
	}
}

func TestCreateWithLeaseHolder(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	res, err := r.Create(ctx, record("a"), "conn:i:1", "")
	if err != nil || res.Info.Refcount != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	rel, err := r.Release(ctx, "a", "conn:i:1", registry.AllRefs, false, "")
	if err != nil || rel.Refcount != 1 {
		t.Fatalf("%+v %v", rel, err)
	}
}

func TestRequestIDsApplyOnce(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	if _, err := r.Create(ctx, record("x"), "", "req-1"); err != nil {
		t.Fatal(err)
	}
	res, err := r.Create(ctx, record("x"), "", "req-1")
	if err != nil || !res.Dup {
		t.Fatalf("replayed create: %+v %v", res, err)
	}
	for i := 0; i < 3; i++ {
		if _, err := r.Acquire(ctx, "x", "pid:1:1", "inst1", "req-2", nil); err != nil {
			t.Fatal(err)
		}
	}
	info, _ := r.Stat(ctx, "x")
	if info.Refcount != 2 {
		t.Fatalf("refcount %d after one get replayed three times, want 2", info.Refcount)
	}
	for i := 0; i < 2; i++ {
		rel, err := r.Release(ctx, "x", "pid:1:1", 1, false, "req-3")
		if err != nil || (i == 1 && !rel.Dup) {
			t.Fatalf("release %d: %+v %v", i, rel, err)
		}
	}
	info, _ = r.Stat(ctx, "x")
	if info.Refcount != 1 {
		t.Fatalf("refcount %d, want 1", info.Refcount)
	}
}

func TestListAndRemove(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	for _, n := range []string{"b", "a", "c"} {
		if _, err := r.Create(ctx, record(n), "", ""); err != nil {
			t.Fatal(err)
		}
	}
	list, next, err := r.List(ctx, "", "", 0)
	if err != nil || len(list) != 3 || next != "" || list[0].Name != "a" || list[2].Name != "c" {
		t.Fatalf("list: %v %q %v (want a, b, c in name order)", list, next, err)
	}
	if ok, _ := r.Remove(ctx, "a", "someone-else"); ok {
		t.Fatal("removed a record of another instance")
	}
	if ok, err := r.Remove(ctx, "a", "inst1"); !ok || err != nil {
		t.Fatalf("remove: %v %v", ok, err)
	}
	// An index entry with no record is cleaned by Remove(name, "").
	r.Client().ZAdd(ctx, r.Keys().Index(), redisZ("ghost"))
	if ok, _ := r.Remove(ctx, "ghost", ""); !ok {
		t.Fatal("ghost index entry not removed")
	}
	names, _ := r.Names(ctx)
	if len(names) != 2 {
		t.Fatalf("names %v", names)
	}
}

func TestRedisDownIsUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	r := registry.New(srv.Client(), registry.Keys{Prefix: "t:", Node: "n"})
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.Acquire(ctx, "w", "h", "i", "", nil)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

// The owning agent's acquire gets only what changed since create; merged with
// the record it made, it must equal the record Redis holds.
func TestBriefAcquireEqualsStoredRecord(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	res, err := r.Create(ctx, record("w"), "conn:1", "")
	if err != nil || !res.Created {
		t.Fatalf("create: %+v %v", res, err)
	}
	stored, err := r.Stat(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Info, stored) {
		t.Fatalf("create returned %+v, Redis holds %+v", res.Info, stored)
	}
	if err := r.Publish(ctx, "w", "ZXZlbnQ="); err != nil {
		t.Fatal(err)
	}
	asked := ""
	known := func(uid string) (v1.Tensor, bool) { asked = uid; return res.Info, uid == res.Info.UID }
	got, err := r.Acquire(ctx, "w", "conn:2", "inst1", "", known)
	if err != nil {
		t.Fatal(err)
	}
	if asked != "w-uid" {
		t.Fatalf("known was asked for %q", asked)
	}
	stored, _ = r.Stat(ctx, "w")
	if !reflect.DeepEqual(got, stored) || got.Refcount != 3 || got.Event != "ZXZlbnQ=" {
		t.Fatalf("brief acquire gave %+v, Redis holds %+v", got, stored)
	}
	// A uid the caller does not know: the full record.
	got, err = r.Acquire(ctx, "w", "conn:3", "inst1", "", func(string) (v1.Tensor, bool) { return v1.Tensor{}, false })
	stored, _ = r.Stat(ctx, "w")
	if err != nil || !reflect.DeepEqual(got, stored) || got.Refcount != 4 {
		t.Fatalf("acquire with an unknown uid gave %+v %v, Redis holds %+v", got, err, stored)
	}
	if _, err := r.Acquire(ctx, "missing", "conn:3", "inst1", "", known); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("brief acquire of a missing tensor: %v", err)
	}
}

func TestListPagesByPrefix(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	var want []string
	for i := 0; i < 25; i++ {
		n := fmt.Sprintf("m.layers.%02d.w", i)
		want = append(want, n)
		for _, name := range []string{n, fmt.Sprintf("other.%02d", i)} {
			if _, err := r.Create(ctx, record(name), "", ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got []string
	pages := 0
	for cursor := ""; ; pages++ {
		list, next, err := r.List(ctx, "m.layers.", cursor, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range list {
			got = append(got, info.Name)
		}
		if next == "" {
			break
		}
		if len(list) != 10 || next != list[len(list)-1].Name {
			t.Fatalf("page %d: %d records, next %q", pages, len(list), next)
		}
		cursor = next
	}
	if pages != 2 || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%d pages: %v, want %v", pages+1, got, want)
	}
	// A name index lost (or from before it existed) is rebuilt from the
	// time index, and stale entries go.
	r.Client().Del(ctx, r.Keys().Names())
	r.Client().ZAdd(ctx, r.Keys().Names(), redisZ("stale"))
	if err := r.IndexNames(ctx); err != nil {
		t.Fatal(err)
	}
	all, _, err := r.List(ctx, "", "", 0)
	if err != nil || len(all) != 50 {
		t.Fatalf("after rebuilding: %d records, %v", len(all), err)
	}
	if n, _ := r.Client().ZCard(ctx, r.Keys().Names()).Result(); n != 50 {
		t.Fatalf("name index has %d entries, want 50 (stale entry kept?)", n)
	}
	// A freed tensor leaves both indexes.
	if _, err := r.Release(ctx, "other.00", registry.HolderRegistry, 1, true, ""); err != nil {
		t.Fatal(err)
	}
	if l, _, _ := r.List(ctx, "other.00", "", 0); len(l) != 0 {
		t.Fatalf("deleted tensor still listed: %v", l)
	}
}

func TestPiecesRoundTrip(t *testing.T) {
	r := newRegistry(t)
	ctx := context.Background()
	rec := record("pieced")
	rec.Bytes, rec.Shape = 6<<20, []int64{3, 1 << 19}
	rec.Pieces = []v1.Piece{{SegmentID: "seg1", SegmentSize: 2 << 20, Offset: 0, Size: 2 << 20},
		{SegmentID: "seg2", SegmentSize: 8 << 20, Offset: 2 << 20, Size: 4 << 20}}
	rec.Offset = 0
	if res, err := r.Create(ctx, rec, "", ""); err != nil || !res.Created || !reflect.DeepEqual(res.Info.Pieces, rec.Pieces) {
		t.Fatalf("create: %+v %v", res, err)
	}
	if _, err := r.Create(ctx, record("whole"), "", ""); err != nil {
		t.Fatal(err)
	}
	got, err := r.Stat(ctx, "pieced")
	if err != nil || !reflect.DeepEqual(got.Pieces, rec.Pieces) {
		t.Fatalf("stat: pieces %v, %v; want %v", got.Pieces, err, rec.Pieces)
	}
	list, _, err := r.List(ctx, "", "", 0)
	if err != nil || len(list) != 2 || !reflect.DeepEqual(list[0].Pieces, rec.Pieces) || list[1].Pieces != nil {
		t.Fatalf("list: %+v %v", list, err)
	}
	// A hash whose pieces were damaged is refused, not mapped wrong.
	r.Client().HSet(ctx, r.Keys().Meta("pieced"), "pieces", "seg1:2097152:0")
	if _, err := r.Stat(ctx, "pieced"); err == nil || !strings.Contains(err.Error(), "pieces") {
		t.Fatalf("stat of damaged pieces: %v", err)
	}
}
