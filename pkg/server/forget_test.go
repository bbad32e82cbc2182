package server_test

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
)

// rawPeer speaks frames on a bare connection, keeping what each answer's
// descriptors were.
type rawPeer struct {
	t  *testing.T
	c  *net.UnixConn
	st *peerBuf
}

// peerBuf is what a rawPeer read past the answer it returned.
type peerBuf struct {
	buf  []byte
	fds  []int
	body []byte // of the last answer read
}

func (p rawPeer) call(req *v1.Request) (*v1.Response, int) {
	p.t.Helper()
	frame, err := v1.EncodeRequest(req)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.c.Write(frame); err != nil {
		p.t.Fatal(err)
	}
	resp, fds := p.read()
	for _, fd := range fds {
		unix.Close(fd)
	}
	return resp, len(fds)
}

// read reads one answer and the descriptors that came with it (bytes and
// descriptors of the next frames may come in the same read: they are kept).
func (p rawPeer) read() (*v1.Response, []int) {
	p.t.Helper()
	st := p.st
	for {
		if len(st.buf) >= v1.HeaderSize {
			h, err := v1.ParseHeader(st.buf)
			if err != nil {
				p.t.Fatal(err)
			}
			if n := v1.HeaderSize + h.BodyLen; len(st.buf) >= n {
				st.body = append(st.body[:0], st.buf[v1.HeaderSize:n]...)
				resp, err := v1.DecodeResponse(st.body)
				if err != nil {
					p.t.Fatal(err)
				}
				st.buf = st.buf[n:]
				if h.NumFDs > len(st.fds) {
					p.t.Fatalf("header announces %d descriptors, %d came", h.NumFDs, len(st.fds))
				}
				fds := st.fds[:h.NumFDs:h.NumFDs]
				st.fds = st.fds[h.NumFDs:]
				return resp, fds
			}
		}
		b := make([]byte, 64<<10)
		oob := make([]byte, unix.CmsgSpace(4*v1.MaxFDs))
		n, oobn, _, _, err := p.c.ReadMsgUnix(b, oob)
		if err != nil {
			p.t.Fatal(err)
		}
		st.buf = append(st.buf, b[:n]...)
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			got, _ := unix.ParseUnixRights(&m)
			st.fds = append(st.fds, got...)
		}
	}
}

// A segment's descriptor goes once per connection, until the peer says it
// closed it: then the next answer for a tensor in it carries it again.
func TestForgetSendsTheDescriptorAgain(t *testing.T) {
	sock, _ := startServer(t, nil, true)
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := rawPeer{t, c, &peerBuf{}}
	hello, _ := p.call(&v1.Request{ID: 1, Op: v1.OpHello})
	if hello.Hello == nil || len(hello.Hello.Features) == 0 || hello.Hello.Features[0] != v1.OpForget {
		t.Fatalf("hello does not announce forget: %+v", hello.Hello)
	}
	created, fds := p.call(&v1.Request{ID: 2, Op: v1.OpCreate, Name: "f.a", DType: "f32", Shape: []int64{16}})
	if created.Error != nil || fds != 1 {
		t.Fatalf("create: %+v, %d descriptors", created.Error, fds)
	}
	seg := created.Tensor.SegmentID
	steps := []struct {
		req     *v1.Request
		wantFDs int
		errCode string
	}{
		{&v1.Request{ID: 3, Op: v1.OpCreate, Name: "f.b", DType: "f32", Shape: []int64{16}}, 0, ""}, // same small segment
		{&v1.Request{ID: 4, Op: v1.OpForget, Segment: seg}, 0, ""},
		{&v1.Request{ID: 5, Op: v1.OpGet, Name: "f.a"}, 1, ""}, // sent again
		{&v1.Request{ID: 6, Op: v1.OpGet, Name: "f.b"}, 0, ""}, // and once only
		{&v1.Request{ID: 7, Op: v1.OpForget, Segment: "no.such.segment"}, 0, ""},
		{&v1.Request{ID: 8, Op: v1.OpForget}, 0, "invalid_argument"},
	}
	for _, s := range steps {
		resp, n := p.call(s.req)
		code := ""
		if resp.Error != nil {
			code = resp.Error.Code
		}
		if code != s.errCode || n != s.wantFDs {
			t.Fatalf("%s %s: error %q, %d descriptors; want %q, %d", s.req.Op, s.req.Name+s.req.Segment, code, n, s.errCode, s.wantFDs)
		}
		if s.req.Op != v1.OpForget && resp.Tensor.SegmentID != seg {
			t.Fatalf("%s in segment %s, want %s", s.req.Name, resp.Tensor.SegmentID, seg)
		}
	}
}
