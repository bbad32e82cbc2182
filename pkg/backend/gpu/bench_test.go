package gpu

import (
	"context"
	"fmt"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
)

// BenchmarkSegment makes and releases one segment per op, by size: what a
// pool's growth costs (a fixed part per segment and a part per byte), the
// model behind the pool's segment-count rules.
func BenchmarkSegment(b *testing.B) {
	for _, mode := range []v1.IPCMode{v1.ModeVMM, v1.ModeLegacy} {
		for _, mib := range []uint64{2, 20, 64, 256} {
			b.Run(fmt.Sprintf("%s/%dMiB", mode, mib), func(b *testing.B) {
				if !Available() {
					b.Skip("no CUDA GPU")
				}
				be, err := New(mode, "bench")
				if err != nil {
					b.Fatal(err)
				}
				defer be.Close()
				ctx := context.Background()
				for b.Loop() {
					seg, err := be.NewSegment(ctx, 0, mib<<20)
					if err != nil {
						b.Fatal(err)
					}
					if err := seg.Release(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
