package server_test

import (
	"net"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
)

func dialPeer(t *testing.T, sock string) rawPeer {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return rawPeer{t, c, &peerBuf{}}
}

// readNews reads a watch's next frame and checks that each pushed segment
// with a descriptor has a descriptor of its size.
func readNews(t *testing.T, p rawPeer) *v1.Response {
	t.Helper()
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, fds := p.read()
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if resp.ID != 0 || resp.Error != nil {
		t.Fatalf("a watch's news: %+v", resp)
	}
	if len(fds) != len(resp.FDs) {
		t.Fatalf("%d descriptors for %v", len(fds), resp.FDs)
	}
	for i, id := range resp.FDs {
		k := slices.IndexFunc(resp.Pushed, func(s v1.SegmentInfo) bool { return s.ID == id })
		var st unix.Stat_t
		if k < 0 || unix.Fstat(fds[i], &st) != nil || uint64(st.Size) != resp.Pushed[k].Size {
			t.Fatalf("descriptor %d (%s) is not its segment's: %+v size %d", i, id, resp.Pushed, st.Size)
		}
	}
	return resp
}

// A watch is told of the segments its tenant has, then of each new one as
// it is made (with its descriptor) and of each released one.
func TestWatchPushesSegments(t *testing.T) {
	sock, _ := startServer(t, nil, true)
	a := dialPeer(t, sock)
	a.call(&v1.Request{ID: 1, Op: v1.OpHello})
	small, _ := a.call(&v1.Request{ID: 2, Op: v1.OpCreate, Name: "w.small", DType: "f32", Shape: []int64{16}})
	if small.Error != nil {
		t.Fatal(small.Error)
	}

	w := dialPeer(t, sock)
	if hello, _ := w.call(&v1.Request{ID: 1, Op: v1.OpHello}); !slices.Contains(hello.Hello.Features, v1.OpWatch) {
		t.Fatalf("hello does not announce watch: %v", hello.Hello.Features)
	}
	if resp, fds := w.call(&v1.Request{ID: 2, Op: v1.OpWatch}); resp.Error != nil || fds != 0 || resp.ID != 2 {
		t.Fatalf("watch: %+v, %d descriptors", resp, fds)
	}
	first := readNews(t, w)
	if len(first.Pushed) != 1 || first.Pushed[0].ID != small.Tensor.SegmentID || first.Pushed[0].IPCMode != v1.ModeHost {
		t.Fatalf("the segment there already: %+v", first.Pushed)
	}

	big, _ := a.call(&v1.Request{ID: 3, Op: v1.OpCreate, Name: "w.big", DType: "f32", Shape: []int64{16 << 20}})
	if big.Error != nil || big.Tensor.SegmentID == small.Tensor.SegmentID {
		t.Fatalf("a create in a new segment: %+v", big)
	}
	if news := readNews(t, w); len(news.Pushed) != 1 || news.Pushed[0].ID != big.Tensor.SegmentID || news.Pushed[0].Size != big.Tensor.SegmentSize {
		t.Fatalf("the new segment: %+v", news)
	}
	a.call(&v1.Request{ID: 4, Op: v1.OpRelease, Name: "w.big"})
	a.call(&v1.Request{ID: 5, Op: v1.OpDelete, Name: "w.big"})
	if trim, _ := a.call(&v1.Request{ID: 6, Op: v1.OpTrim}); trim.Error != nil || trim.Trimmed == 0 {
		t.Fatalf("trim: %+v", trim)
	}
	if news := readNews(t, w); !slices.Contains(news.Gone, big.Tensor.SegmentID) {
		t.Fatalf("the released segment: %+v", news)
	}
}

// A connection that holds a reference cannot become a watch (its
// references would sit on a connection that takes no more requests).
func TestWatchRefusedWithReferences(t *testing.T) {
	sock, _ := startServer(t, nil, true)
	a := dialPeer(t, sock)
	a.call(&v1.Request{ID: 1, Op: v1.OpHello})
	a.call(&v1.Request{ID: 2, Op: v1.OpCreate, Name: "w.a", DType: "f32", Shape: []int64{4}})
	resp, _ := a.call(&v1.Request{ID: 3, Op: v1.OpWatch})
	if resp.Error == nil || resp.Error.Code != "failed_precondition" {
		t.Fatalf("watch with a reference held: %+v", resp)
	}
	if got, _ := a.call(&v1.Request{ID: 4, Op: v1.OpStat, Name: "w.a"}); got.Error != nil {
		t.Fatalf("the connection serves on after the refusal: %+v", got.Error)
	}
}

// The server stops with a watch open: the watch ends with it.
func TestWatchEndsWithTheServer(t *testing.T) {
	var w rawPeer
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t.Run("serve", func(t *testing.T) {
			sock, _ := startServer(t, nil, true)
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			w = rawPeer{t, c, &peerBuf{}}
			w.call(&v1.Request{ID: 1, Op: v1.OpHello})
			if resp, _ := w.call(&v1.Request{ID: 2, Op: v1.OpWatch}); resp.Error != nil {
				t.Fatal(resp.Error)
			}
		}) // the server stops here, the watch still open
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop with a watch open")
	}
	w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the watch stayed open after the server stopped")
	}
	w.c.Close()
}
