package pool

import "sync/atomic"

// Budget caps the bytes reserved by the pools of one device. Pools of
// different tenants share the device's budget.
type Budget struct {
	limit uint64
	used  atomic.Uint64
}

// NewBudget returns a budget of limit bytes; 0 means unlimited.
func NewBudget(limit uint64) *Budget { return &Budget{limit: limit} }

// Limit is the cap in bytes (0: none).
func (b *Budget) Limit() uint64 { return b.limit }

// Used is the number of bytes currently reserved.
func (b *Budget) Used() uint64 { return b.used.Load() }

func (b *Budget) reserve(n uint64) bool {
	for {
		cur := b.used.Load()
		if b.limit > 0 && cur+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (b *Budget) release(n uint64) { b.used.Add(^(n - 1)) }
