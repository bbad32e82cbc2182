package store

import (
	"sync"
	"sync/atomic"

	"github.com/memcuda/memcuda/internal/peakmap"
	"github.com/memcuda/memcuda/pkg/registry"
)

// leaseSet is the connection holders of this instance that are still open.
// A lease's references are dropped when its connection closes; one whose
// drop failed (Redis down) is no longer live, so GC drops it later.
type leaseSet struct {
	instance string
	seq      atomic.Uint64
	mu       sync.Mutex
	open     peakmap.Map[string, struct{}]
	failed   map[string][]string // closed leases whose drop failed -> the names they still hold
}

func newLeaseSet(instance string) *leaseSet {
	return &leaseSet{instance: instance, failed: map[string][]string{}}
}

// add returns a new connection holder.
func (l *leaseSet) add() string {
	h := registry.ConnHolder(l.instance, l.seq.Add(1))
	l.mu.Lock()
	l.open.Set(h, struct{}{})
	l.mu.Unlock()
	return h
}

func (l *leaseSet) remove(h string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open.Delete(h)
}

func (l *leaseSet) live(h string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.open.Get(h)
	return ok
}

// dropFailed records the names a closed lease could not drop (none: all
// dropped): GC drops them later.
func (l *leaseSet) dropFailed(h string, names []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(names) == 0 {
		delete(l.failed, h)
		return
	}
	l.failed[h] = names
}

// failedDrops are the closed leases whose drop failed and their names.
func (l *leaseSet) failedDrops() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]string, len(l.failed))
	for h, ns := range l.failed {
		out[h] = append([]string(nil), ns...)
	}
	return out
}
