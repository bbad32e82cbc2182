package store

import (
	"context"
	"errors"
	"fmt"
	"sync"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/pool"
)

type poolKey struct {
	device int
	tenant string
}

// poolSet holds a pool per device and tenant (tenants never share a
// segment) and one budget per device that its tenants' pools share.
type poolSet struct {
	// source makes the segments of a device's pools.
	source func(dev int) pool.Source[backend.Segment]
	// limit is the bytes a device's pools may reserve together.
	limit func(d backend.Device) uint64
	// granularity is what a device's segments are a multiple of.
	granularity func(dev int) uint64
	// events are the options that report a pool's segments to watchers.
	events func(k poolKey) pool.Option
	// mapOpts are the options every pool takes for how clients map the
	// backend's segments (pool.WithWholeMaps on vmm).
	mapOpts []pool.Option

	mu      sync.Mutex
	pools   map[poolKey]*pool.Pool[backend.Segment]
	budgets map[int]*pool.Budget
}

// of returns the pool of device d and tenant, made on first use.
func (ps *poolSet) of(d backend.Device, tenant string) *pool.Pool[backend.Segment] {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	k := poolKey{d.Index, tenant}
	if p := ps.pools[k]; p != nil {
		return p
	}
	b := ps.budgets[d.Index]
	if b == nil {
		b = pool.NewBudget(ps.limit(d))
		ps.budgets[d.Index] = b
	}
	opts := append([]pool.Option{pool.WithBudget(b), pool.WithGranularity(ps.granularity(d.Index)), ps.events(k)}, ps.mapOpts...)
	p := pool.New(ps.source(d.Index), opts...)
	ps.pools[k] = p
	return p
}

// keys are the keys of the pools keep selects.
func (ps *poolSet) keys(keep func(poolKey) bool) []poolKey {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var out []poolKey
	for k := range ps.pools {
		if keep(k) {
			out = append(out, k)
		}
	}
	return out
}

// ofKey is the pool of k, nil when there is none.
func (ps *poolSet) ofKey(k poolKey) *pool.Pool[backend.Segment] {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.pools[k]
}

// matching returns the pools keep selects.
func (ps *poolSet) matching(keep func(poolKey) bool) []*pool.Pool[backend.Segment] {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var out []*pool.Pool[backend.Segment]
	for k, p := range ps.pools {
		if keep(k) {
			out = append(out, p)
		}
	}
	return out
}

// trim releases the cached free segments of the pools keep selects and
// returns the bytes given back.
func (ps *poolSet) trim(keep func(poolKey) bool) (uint64, error) {
	var total uint64
	var errs []error
	for _, p := range ps.matching(keep) {
		n, err := p.Trim()
		total += n
		errs = append(errs, err)
	}
	return total, errors.Join(errs...)
}

func allPools(poolKey) bool { return true }

// stats are every pool's statistics in their wire form.
func (ps *poolSet) stats() []v1.PoolStats {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := []v1.PoolStats{}
	for k, p := range ps.pools {
		s := p.Stats()
		out = append(out, v1.PoolStats{
			Device: k.device, Tenant: k.tenant, Limit: ps.budgets[k.device].Limit(),
			Allocated: s.Allocated, Requested: s.Requested, Reserved: s.Reserved,
			PeakAllocated: s.PeakAllocated, PeakReserved: s.PeakReserved, Segments: s.Segments,
			ActiveBlocks: s.ActiveBlocks, FreeBlocks: s.FreeBlocks, LargestFree: s.LargestFree,
			Allocs: s.Allocs, Frees: s.Frees, SegmentAllocs: s.SegmentAllocs, SegmentReleases: s.SegmentReleases,
			Fragmentation: s.Fragmentation,
		})
	}
	return out
}

// close releases every segment of every pool.
func (ps *poolSet) close() error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var errs []error
	for k, p := range ps.pools {
		errs = append(errs, p.Close())
		delete(ps.pools, k)
	}
	return errors.Join(errs...)
}

// newSegmentSource is the backend's segments for a device, zero-filled
// when zero is set (a new segment may hold what its memory held before).
func (s *Store) newSegmentSource(dev int) pool.Source[backend.Segment] {
	return pool.SourceFunc[backend.Segment](func(ctx context.Context, size uint64) (backend.Segment, error) {
		seg, err := s.be.NewSegment(ctx, dev, size)
		if err != nil || !s.zeroFill {
			return seg, err
		}
		if err := s.zero(dev, seg, 0, seg.Size()); err != nil {
			seg.Release()
			return nil, fmt.Errorf("zero-fill: %w", err)
		}
		return seg, nil
	})
}
