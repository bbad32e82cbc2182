package gpu

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"testing"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/cuda"
)

func newBackend(t *testing.T, mode v1.IPCMode) *Backend {
	t.Helper()
	if !Available() {
		t.Skip("no CUDA GPU")
	}
	b, err := New(mode, "test")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewWithoutGPU(t *testing.T) {
	if Available() {
		t.Skip("a GPU is present")
	}
	if _, err := New(v1.ModeVMM, "x"); !errors.Is(err, cuda.ErrNoDriver) {
		t.Fatalf("New without a GPU: %v, want ErrNoDriver", err)
	}
	if _, err := New("host", "x"); err == nil {
		t.Fatal("New accepted mode host")
	}
}

func TestSegments(t *testing.T) {
	for _, mode := range []v1.IPCMode{v1.ModeVMM, v1.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			b := newBackend(t, mode)
			devs := b.Devices()
			if len(devs) == 0 || devs[0].UUID == "" || devs[0].Total == 0 {
				t.Fatalf("devices %+v", devs)
			}
			g := b.Granularity(0)
			seg, err := b.NewSegment(context.Background(), 0, 2*g)
			if err != nil {
				t.Fatal(err)
			}
			s := seg.(*Segment)
			d := s.Device()
			if err := d.CopyToDevice(s.Ptr(), bytes.Repeat([]byte{0xAB}, 4096)); err != nil {
				t.Fatal(err)
			}
			if err := seg.Zero(context.Background(), 0, 4096); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			if err := d.CopyFromDevice(buf, s.Ptr()); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, make([]byte, 4096)) {
				t.Fatal("Zero left data")
			}
			// The queued zero-fill: a larger range, waited for through the event.
			n := uint64(1 << 20)
			if err := d.CopyToDevice(s.Ptr()+4096, bytes.Repeat([]byte{0xCD}, int(n))); err != nil {
				t.Fatal(err)
			}
			wait, err := s.ZeroAsync(context.Background(), 4096, n)
			if err != nil {
				t.Fatal(err)
			}
			if err := wait(); err != nil {
				t.Fatal(err)
			}
			if done, err := s.zeroed.Done(); !done || err != nil {
				t.Fatalf("zero event not complete after wait: %v %v", done, err)
			}
			big := make([]byte, n)
			if err := d.CopyFromDevice(big, s.Ptr()+4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(big, make([]byte, n)) {
				t.Fatal("ZeroAsync left data")
			}
			if _, err := s.ZeroAsync(context.Background(), 2*g-10, 11); err == nil {
				t.Fatal("ZeroAsync past the segment's end did not fail")
			}
			switch mode {
			case v1.ModeVMM:
				if seg.FD() < 0 || seg.Handle() != "" || s.Pinned() {
					t.Fatalf("vmm segment fd=%d handle=%q pinned=%v", seg.FD(), seg.Handle(), s.Pinned())
				}
			case v1.ModeLegacy:
				raw, err := base64.StdEncoding.DecodeString(seg.Handle())
				if seg.FD() != -1 || err != nil || len(raw) != 64 || !s.Pinned() {
					t.Fatalf("legacy segment fd=%d handle=%q pinned=%v", seg.FD(), seg.Handle(), s.Pinned())
				}
			}
			if err := seg.Release(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A segment released right after a clear was queued on it (a trim just
// after the last free) must not fault: the next segment's clear and the
// copies after it work.
func TestReleaseRightAfterAQueuedClear(t *testing.T) {
	for _, mode := range []v1.IPCMode{v1.ModeVMM, v1.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			b := newBackend(t, mode)
			ctx := context.Background()
			size := uint64(2 << 30) // a clear that takes a while
			for i := 0; i < 3; i++ {
				seg, err := b.NewSegment(ctx, 0, size)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := seg.(*Segment).ZeroAsync(ctx, 0, size); err != nil {
					t.Fatal(err)
				}
				if err := seg.Release(); err != nil {
					t.Fatal(err)
				}
			}
			seg, err := b.NewSegment(ctx, 0, b.Granularity(0))
			if err != nil {
				t.Fatal(err)
			}
			s := seg.(*Segment)
			if err := seg.Zero(ctx, 0, 4096); err != nil {
				t.Fatalf("the device faulted after releases under queued clears: %v", err)
			}
			buf := make([]byte, 4096)
			if err := s.Device().CopyFromDevice(buf, s.Ptr()); err != nil {
				t.Fatal(err)
			}
			if err := seg.Release(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestOutOfMemoryIsClassified(t *testing.T) {
	b := newBackend(t, v1.ModeVMM)
	_, err := b.NewSegment(context.Background(), 0, b.Devices()[0].Total*4)
	if err == nil {
		t.Fatal("a segment of four times the device's memory was created")
	}
	t.Logf("oversized segment: %v", err)
}
