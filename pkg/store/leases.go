package store

import (
	"sync"
	"sync/atomic"

	"github.com/memcuda/memcuda/pkg/registry"
)

// leaseSet is the connection holders of this instance that are still open.
// A lease's references are dropped when its connection closes; one whose
// drop failed (Redis down) is no longer live, so GC drops it later.
type leaseSet struct {
	instance string
	seq      atomic.Uint64
	mu       sync.Mutex
	open     map[string]struct{}
}

func newLeaseSet(instance string) *leaseSet {
	return &leaseSet{instance: instance, open: map[string]struct{}{}}
}

// add returns a new connection holder.
func (l *leaseSet) add() string {
	h := registry.ConnHolder(l.instance, l.seq.Add(1))
	l.mu.Lock()
	l.open[h] = struct{}{}
	l.mu.Unlock()
	return h
}

func (l *leaseSet) remove(h string) {
	l.mu.Lock()
	delete(l.open, h)
	l.mu.Unlock()
}

func (l *leaseSet) live(h string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.open[h]
	return ok
}
