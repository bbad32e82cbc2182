package peakmap

import (
	"runtime"
	"testing"
)

func TestDeleteRemakesAfterACrowd(t *testing.T) {
	var p Map[int, int]
	const crowd = 4 * MinPeak
	for i := range crowd {
		p.Set(i, i*i)
	}
	remade := 0
	for i := range crowd - 10 {
		if p.Delete(i) {
			remade++
			if n := p.Len(); n >= crowd/4 && remade == 1 {
				t.Fatalf("remade with %d of a peak of %d left", n, crowd)
			}
		}
	}
	if remade == 0 {
		t.Fatal("a map that fell from 4096 entries to 10 was never made anew")
	}
	if p.Len() != 10 {
		t.Fatalf("%d entries left, want 10", p.Len())
	}
	for i := crowd - 10; i < crowd; i++ {
		if v, ok := p.Get(i); !ok || v != i*i {
			t.Fatalf("entry %d lost in a remake: %d, %v", i, v, ok)
		}
	}
	seen := 0
	for k, v := range p.All() {
		if v != k*k {
			t.Fatalf("entry %d holds %d", k, v)
		}
		seen++
	}
	if seen != 10 {
		t.Fatalf("All yielded %d entries, want 10", seen)
	}
}

func TestSmallMapsAreNotRemade(t *testing.T) {
	var p Map[string, bool]
	for i := range MinPeak - 1 {
		p.Set(string(rune(i)), true)
	}
	for i := range MinPeak - 1 {
		if p.Delete(string(rune(i))) {
			t.Fatalf("a map that never reached %d entries was remade at %d", MinPeak, p.Len())
		}
	}
	if _, ok := p.Get("x"); ok || p.Len() != 0 {
		t.Fatal("empty map answers")
	}
}

// The point of the remake: the heap a crowd used comes back.
func TestRemakeGivesTheRoomBack(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	before := heap()
	var p Map[int, [64]byte]
	const crowd = 100_000
	for i := range crowd {
		p.Set(i, [64]byte{})
	}
	full := heap()
	for i := range crowd - 1 {
		p.Delete(i)
	}
	after := heap()
	if _, ok := p.Get(crowd - 1); !ok {
		t.Fatal("the last entry is lost")
	}
	runtime.KeepAlive(&p)
	grown := full - before
	if kept := after - min(after, before); kept > grown/10 {
		t.Fatalf("after the crowd the map keeps %d of the %d bytes it grew by", kept, grown)
	}
}
