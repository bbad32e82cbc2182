package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/store"
)

// A watch connection (OpWatch) is told of its tenant's segments as the
// agent makes and releases them, so that its client maps them before any
// get needs them. It takes no requests after the watch: one goroutine
// writes its news and no thread waits on it.

// maxNews bounds the segments a watch may fall behind by; a client that
// reads none of them for that long loses its watch (the connection closes)
// rather than the agent holding descriptors for it without end.
const maxNews = 4096

// pushWithin bounds one push write to a peer that does not read.
const pushWithin = time.Second

// pushed is a segment to tell the watch about, with a descriptor of its
// own (-1: none; a legacy segment's handle is in info).
type pushed struct {
	info v1.SegmentInfo
	fd   int
}

// segmentNews are a watch's news not yet written.
type segmentNews struct {
	mu       sync.Mutex
	pushed   []pushed
	gone     []string
	overflow bool
	kick     chan struct{}
}

// add is the store's callback: it runs under a pool's lock, so it only
// duplicates the descriptor and queues.
func (n *segmentNews) add(ev store.SegmentEvent) {
	seg := ev.Segment
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.overflow {
		return
	}
	if len(n.pushed)+len(n.gone) >= maxNews {
		n.overflow = true
	} else if ev.Added {
		p := pushed{info: v1.SegmentInfo{ID: seg.ID(), Size: seg.Size(), Device: ev.Device.Index, DeviceUUID: ev.Device.UUID}, fd: -1}
		if fd := seg.FD(); fd >= 0 {
			dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				n.overflow = true // the watch cannot be kept true: it ends
			}
			p.fd = dup
		} else {
			p.info.IPCHandle = seg.Handle()
		}
		n.pushed = append(n.pushed, p)
	} else {
		n.gone = append(n.gone, seg.ID())
	}
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// take returns the news so far.
func (n *segmentNews) take() ([]pushed, []string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p, g := n.pushed, n.gone
	n.pushed, n.gone = nil, nil
	return p, g, n.overflow
}

// closeAll closes the descriptors of news never written.
func (n *segmentNews) closeAll() {
	p, _, _ := n.take()
	closePushed(p)
}

func closePushed(p []pushed) {
	for _, x := range p {
		if x.fd >= 0 {
			unix.Close(x.fd)
		}
	}
}

func (cn *conn) watch(_ context.Context, _ *v1.Request, _ *v1.Response) ([]int, error) {
	if len(cn.leases) > 0 {
		return nil, fmt.Errorf("%w: a connection that holds references cannot become a watch: watch on a connection of its own", errdefs.ErrFailedPrecondition)
	}
	cn.watching = true
	return nil, nil
}

// pushSegments serves a watch connection until it closes.
func (cn *conn) pushSegments() {
	defer cn.srv.wg.Done()
	defer cn.srv.forget(cn)
	defer cn.close()
	news := &segmentNews{kick: make(chan struct{}, 1)}
	defer news.closeAll()
	stop := cn.srv.st.WatchSegments(cn.id.Namespace, news.add)
	defer stop()
	// The peer sends nothing more: readable means it closed (or broke the
	// protocol), and the server's stop shuts the connection down, which
	// also makes it readable.
	ended := make(chan struct{})
	if err := cn.srv.parker.Watch(cn.raw, time.Time{}, func(error) { close(ended) }); err != nil {
		cn.log().Debug("watch not kept", "err", err)
		return
	}
	for {
		p, g, overflow := news.take()
		err := cn.writeNews(p, g)
		closePushed(p)
		switch {
		case overflow:
			cn.log().Warn("closing a watch that fell too far behind", "news", maxNews)
			return
		case err != nil:
			if !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) {
				cn.log().Info("closing a watch", "err", err)
			}
			return
		}
		select {
		case <-ended:
			return
		case <-news.kick:
		}
	}
}

// writeNews writes pushed segments (at most v1.MaxFDs descriptors a frame)
// and gone ones as frames of id 0.
func (cn *conn) writeNews(p []pushed, gone []string) error {
	if len(gone) > 0 {
		// Made and released since the last write: not worth mapping (the
		// frame order would have the client map it after its release).
		released := make(map[string]bool, len(gone))
		for _, id := range gone {
			released[id] = true
		}
		kept := make([]pushed, 0, len(p))
		for _, x := range p {
			if !released[x.info.ID] {
				kept = append(kept, x)
			}
		}
		p = kept
	}
	for len(p) > 0 || len(gone) > 0 {
		resp := v1.Response{OK: true, Gone: gone}
		gone = nil
		var fds []int
		for len(p) > 0 && len(fds) < v1.MaxFDs {
			x := p[0]
			p = p[1:]
			info := x.info
			info.IPCMode = cn.srv.st.Mode()
			resp.Pushed = append(resp.Pushed, info)
			if x.fd >= 0 {
				fds = append(fds, x.fd)
				resp.FDs = append(resp.FDs, info.ID)
			}
		}
		frame, err := v1.EncodeResponse(&resp)
		if err != nil {
			return err
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if _, err := cn.raw.WriteMsgWithin(frame, oob, pushWithin); err != nil {
			return err
		}
	}
	return nil
}
