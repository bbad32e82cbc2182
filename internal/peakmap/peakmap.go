// Package peakmap is a map that is made anew once it has fallen well below
// its peak. A Go map keeps the room of the most entries it ever held, so
// without this the memory of a crowd of connections would stay after the
// crowd has gone.
package peakmap

import (
	"iter"
	"maps"
)

// MinPeak is the smallest peak worth giving back: below it a map's room is
// too small to matter.
const MinPeak = 1024

// Map is a map with a peak. The zero value is empty and ready; it is not
// safe for concurrent use.
type Map[K comparable, V any] struct {
	m    map[K]V
	peak int // the most entries since m was last made
}

// Set puts v under k.
func (p *Map[K, V]) Set(k K, v V) {
	if p.m == nil {
		p.m = map[K]V{}
	}
	p.m[k] = v
	p.peak = max(p.peak, len(p.m))
}

// Get returns k's value and whether k is there.
func (p *Map[K, V]) Get(k K) (V, bool) {
	v, ok := p.m[k]
	return v, ok
}

// Len is the number of entries.
func (p *Map[K, V]) Len() int { return len(p.m) }

// All yields every entry, in no order.
func (p *Map[K, V]) All() iter.Seq2[K, V] { return maps.All(p.m) }

// Delete removes k. Once the map holds under a quarter of a peak of at
// least MinPeak, it is copied into a new one that fits, and Delete reports
// true: a crowd has gone (callers may give back other memory then). The
// copies cost at most a third of the deletes since the peak.
func (p *Map[K, V]) Delete(k K) (remade bool) {
	delete(p.m, k)
	n := len(p.m)
	if p.peak < MinPeak || n >= p.peak/4 {
		return false
	}
	m := make(map[K]V, n)
	for k, v := range p.m {
		m[k] = v
	}
	p.m, p.peak = m, n
	return true
}
