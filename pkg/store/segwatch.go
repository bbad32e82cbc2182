package store

import (
	"sync"

	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/pool"
)

// SegmentEvent is a segment a tenant's pool added (Added) or is releasing.
// Segment is valid only during the call that passes the event: keep a
// duplicate of its descriptor, not the descriptor.
type SegmentEvent struct {
	Device  backend.Device
	Segment backend.Segment
	Added   bool
}

// segmentWatchers are the callbacks of WatchSegments by tenant.
type segmentWatchers struct {
	mu       sync.Mutex
	next     int
	byTenant map[string]map[int]func(SegmentEvent)
}

// WatchSegments calls fn with every segment of tenant's pools now (Added)
// and with each segment they add or release from then on, until stop is
// called. A segment added while the call runs may be passed twice. fn runs
// under a pool's lock: it must not block or call the store.
func (s *Store) WatchSegments(tenant string, fn func(SegmentEvent)) (stop func()) {
	w := &s.segWatch
	w.mu.Lock()
	if w.byTenant == nil {
		w.byTenant = map[string]map[int]func(SegmentEvent){}
	}
	if w.byTenant[tenant] == nil {
		w.byTenant[tenant] = map[int]func(SegmentEvent){}
	}
	w.next++
	id := w.next
	w.byTenant[tenant][id] = fn
	w.mu.Unlock()
	// After the registration (and not under its lock: a pool's events take
	// it under the pool's), so that no segment falls between the two.
	for _, k := range s.pools.keys(func(k poolKey) bool { return k.tenant == tenant }) {
		if p := s.pools.ofKey(k); p != nil {
			dev := s.device(k.device)
			p.Segments(func(mem backend.Segment) { fn(SegmentEvent{Device: dev, Segment: mem, Added: true}) })
		}
	}
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.byTenant[tenant], id)
		if len(w.byTenant[tenant]) == 0 {
			delete(w.byTenant, tenant)
		}
	}
}

// segmentEvents is the pool option that passes k's segment events to its
// tenant's watchers.
func (s *Store) segmentEvents(k poolKey) pool.Option {
	return pool.WithSegmentEvents(func(mem backend.Segment, added bool) {
		w := &s.segWatch
		w.mu.Lock()
		defer w.mu.Unlock()
		fns := w.byTenant[k.tenant]
		if len(fns) == 0 {
			return
		}
		ev := SegmentEvent{Device: s.device(k.device), Segment: mem, Added: added}
		for _, fn := range fns {
			fn(ev)
		}
	})
}

// device is the backend's device of index i.
func (s *Store) device(i int) backend.Device {
	for _, d := range s.be.Devices() {
		if d.Index == i {
			return d
		}
	}
	return backend.Device{Index: i}
}
