package pool

import (
	"context"
	"testing"
)

// BenchmarkAllocFree is one alloc+free pair from a warm pool, with a few
// other live blocks around so the free set is not trivially empty.
func BenchmarkAllocFree(b *testing.B) {
	for _, size := range []struct {
		name string
		n    uint64
	}{{"4KiB", 4 << 10}, {"512KiB", 512 << 10}, {"16MiB", 16 << 20}} {
		b.Run(size.name, func(b *testing.B) {
			p := New(&fakeSource{})
			ctx := context.Background()
			var keep []*Block[Segment]
			for i := 0; i < 64; i++ {
				k, _ := p.Alloc(ctx, uint64(i+1)*4096)
				keep = append(keep, k)
			}
			for i := 0; i < len(keep); i += 2 {
				p.Free(keep[i])
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				blk, err := p.Alloc(ctx, size.n)
				if err != nil {
					b.Fatal(err)
				}
				p.Free(blk)
			}
		})
	}
}

// mapBaseline is the original design's "plan B": free lists bucketed by rounded size in a
// Go map, no splitting or coalescing. It is the baseline the pool is compared
// with in the same run.
type mapBaseline struct {
	free map[uint64][]uint64
	next uint64
}

func (m *mapBaseline) alloc(n uint64) (uint64, uint64) {
	size := RoundSize(n)
	if l := m.free[size]; len(l) > 0 {
		off := l[len(l)-1]
		m.free[size] = l[:len(l)-1]
		return off, size
	}
	off := m.next
	m.next += size
	return off, size
}

func (m *mapBaseline) release(off, size uint64) { m.free[size] = append(m.free[size], off) }

func BenchmarkMapBaselineAllocFree(b *testing.B) {
	for _, size := range []struct {
		name string
		n    uint64
	}{{"4KiB", 4 << 10}, {"512KiB", 512 << 10}, {"16MiB", 16 << 20}} {
		b.Run(size.name, func(b *testing.B) {
			m := &mapBaseline{free: map[uint64][]uint64{}}
			for i := 0; i < 64; i++ {
				off, sz := m.alloc(uint64(i+1) * 4096)
				if i%2 == 0 {
					m.release(off, sz)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				off, sz := m.alloc(size.n)
				m.release(off, sz)
			}
		})
	}
}
