package cuda

import "testing"

// The zero-fill of a new tensor: a synchronous fill (what the agent waits
// for) against a queued fill with an event (what a client could wait on
// on its own stream instead).
func benchFill(b *testing.B, async bool) {
	d := needGPU(b)
	const n = 512 << 10
	p, err := d.MemAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer d.MemFree(p)
	ev, err := d.NewIPCEvent()
	if err != nil {
		b.Fatal(err)
	}
	defer ev.Destroy()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if async {
			err = d.MemsetAsync(p, 0, n, ev)
		} else {
			err = d.Memset(p, 0, n)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := ev.Wait(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkMemsetSync512K(b *testing.B)       { benchFill(b, false) }
func BenchmarkMemsetAsyncEvent512K(b *testing.B) { benchFill(b, true) }

// The agent's check that a queued fill is done.
func BenchmarkEventQuery(b *testing.B) {
	d := needGPU(b)
	ev, err := d.NewIPCEvent()
	if err != nil {
		b.Fatal(err)
	}
	defer ev.Destroy()
	if err := ev.Record(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := ev.Done(); err != nil {
			b.Fatal(err)
		}
	}
}
