package server

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync/atomic"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/cuda"
	"github.com/memcuda/memcuda/pkg/errdefs"
	"github.com/memcuda/memcuda/pkg/store"
)

// sharedEvent is a client's IPC event opened in the agent. The connection
// holds one reference and every fence made from it another: the event is
// destroyed when the last goes, which may be after the connection closed.
type sharedEvent struct {
	ev   *cuda.Event
	refs atomic.Int32
}

func (e *sharedEvent) Release() {
	if e.refs.Add(-1) == 0 {
		e.ev.Destroy()
	}
}

// eventFence is a store.Fence over a shared event; fences of the same event
// compare equal.
type eventFence struct{ e *sharedEvent }

// Done reports whether the recorded work finished. A failing query (the
// exporting process is gone, and its work with it) counts as done.
func (f eventFence) Done() bool {
	done, err := f.e.ev.Done()
	if err != nil {
		slog.Debug("IPC event query failed; treating the fence as done", "err", err)
	}
	return done || err != nil
}

func (f eventFence) Release() { f.e.Release() }

func decodeEvent(b64 string) (cuda.IPCEventHandle, error) {
	var h cuda.IPCEventHandle
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != len(h) {
		return h, errdefs.Invalid("event must be a base64 CUipcEventHandle of %d bytes", len(h))
	}
	copy(h[:], raw)
	return h, nil
}

// fence opens (once per connection) the event a client sent with a release
// of name, and returns a fence holding a reference on it.
func (cn *conn) fence(name, b64 string) (store.Fence, error) {
	info := cn.infos[name]
	if info.IPCMode != v1.ModeVMM && info.IPCMode != v1.ModeLegacy {
		return nil, errdefs.Invalid("events order GPU work; tensor %q is %s", name, info.IPCMode)
	}
	e := cn.events[b64]
	if e == nil {
		h, err := decodeEvent(b64)
		if err != nil {
			return nil, err
		}
		d, err := cuda.GetDevice(info.Device)
		if err != nil {
			return nil, err
		}
		ev, err := d.OpenIPCEvent(h)
		if err != nil {
			return nil, fmt.Errorf("%w: open the client's IPC event: %w", errdefs.ErrInvalidArgument, err)
		}
		e = &sharedEvent{ev: ev}
		e.refs.Store(1)
		if cn.events == nil {
			cn.events = map[string]*sharedEvent{}
		}
		cn.events[b64] = e
	}
	e.refs.Add(1)
	return eventFence{e}, nil
}
