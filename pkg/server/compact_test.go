package server_test

import (
	"slices"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
)

// A connection that asked for compact records gets its creates', gets' and
// stats' answers in that layout, with the same records a JSON connection
// sees, and every other answer in JSON. A pod's connection may ask (and
// watch): neither names a tensor.
func TestCompactRecords(t *testing.T) {
	a := &fakeAuth{shares: map[string]string{}, ns: "team-a"}
	sock, _ := startServer(t, a, false)
	c, j := dialPeer(t, sock), dialPeer(t, sock)
	for _, p := range []rawPeer{c, j} {
		if h, _ := p.call(&v1.Request{ID: 1, Op: v1.OpHello}); h.Error != nil || !slices.Contains(h.Hello.Features, v1.OpCompactRecords) {
			t.Fatalf("hello: %+v", h)
		}
	}
	if r, _ := c.call(&v1.Request{ID: 2, Op: v1.OpCompactRecords}); r.Error != nil || v1.IsCompact(c.st.body) {
		t.Fatalf("compact-records: %+v, body %q", r, c.st.body)
	}
	created, fds := c.call(&v1.Request{ID: 3, Op: v1.OpCreate, Name: "kv.0", DType: "f16", Shape: []int64{4, 8}})
	if created.Error != nil || !v1.IsCompact(c.st.body) || fds != 1 || len(created.FDs) != 1 || created.ID != 3 {
		t.Fatalf("create: %+v (%d descriptors), body %q", created, fds, c.st.body)
	}
	if rec := created.Tensor; rec.Tenant != "team-a" || rec.Bytes != 64 || rec.DType != v1.F16 || created.FDs[0] != rec.SegmentID {
		t.Fatalf("created %+v", created)
	}
	seen, _ := j.call(&v1.Request{ID: 4, Op: v1.OpStat, Name: "kv.0"})
	if seen.Error != nil || v1.IsCompact(j.st.body) {
		t.Fatalf("stat on the JSON connection: %+v, body %q", seen, j.st.body)
	}
	for _, step := range []struct {
		req     *v1.Request
		compact bool
	}{
		{&v1.Request{ID: 5, Op: v1.OpGet, Name: "kv.0"}, true},
		{&v1.Request{ID: 6, Op: v1.OpGet, Name: "kv.0"}, true}, // held: the warm path
		{&v1.Request{ID: 7, Op: v1.OpStat, Name: "kv.0"}, true},
		{&v1.Request{ID: 8, Op: v1.OpList}, false},
		{&v1.Request{ID: 9, Op: v1.OpGet, Name: "no.such"}, false},
		{&v1.Request{ID: 10, Op: v1.OpRelease, Name: "kv.0"}, false},
		{&v1.Request{ID: 11, Op: v1.OpStats}, false},
	} {
		resp, _ := c.call(step.req)
		if v1.IsCompact(c.st.body) != step.compact || resp.ID != step.req.ID {
			t.Fatalf("%s %s: compact %v, want %v: %q", step.req.Op, step.req.Name, !step.compact, step.compact, c.st.body)
		}
		if step.compact {
			got, want := *resp.Tensor, *seen.Tensor
			got.Refcount, got.Mtime, want.Refcount, want.Mtime = 0, 0, 0, 0
			if got.UID != want.UID || got.SegmentID != want.SegmentID || got.Offset != want.Offset ||
				got.Name != want.Name || got.Tenant != want.Tenant || got.DType != want.DType || len(got.Shape) != 2 {
				t.Fatalf("%s: compact record %+v, JSON one %+v", step.req.Op, got, want)
			}
		}
	}
	w := dialPeer(t, sock)
	w.call(&v1.Request{ID: 1, Op: v1.OpHello})
	if r, _ := w.call(&v1.Request{ID: 2, Op: v1.OpWatch}); r.Error != nil {
		t.Fatalf("a pod's watch: %+v", r.Error)
	}
}
