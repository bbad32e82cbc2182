// Package gpu is the CUDA backend in its two modes:
//
//   - vmm: segments from cuMemCreate with the POSIX-fd handle type, shared as
//     file descriptors over the agent socket. Works across PID namespaces.
//     Clients' mappings keep the physical memory alive, so releasing a
//     segment here is always safe.
//   - legacy: segments from cuMemAlloc, shared by CUipcMemHandle (base64 in
//     the registry, plus the tensor's offset), as the original design has it. A
//     process that read the handle may map the segment at any time, so
//     legacy segments are pinned: trim never releases them.
package gpu

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/cuda"
	"github.com/memcuda/memcuda/pkg/backend"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// Backend serves every visible GPU.
type Backend struct {
	mode     v1.IPCMode
	instance string
	devs     []backend.Device
	cu       map[int]*cuda.Device
	gran     map[int]uint64
	zeroed   map[int]*cuda.Event // recorded after each queued zero-fill of the device
	seq      atomic.Uint64
}

// Available reports whether a driver and at least one GPU are present.
func Available() bool {
	n, err := cuda.DeviceCount()
	return err == nil && n > 0
}

// New opens every GPU for mode vmm or legacy.
func New(mode v1.IPCMode, instance string) (*Backend, error) {
	if mode != v1.ModeVMM && mode != v1.ModeLegacy {
		return nil, errdefs.Invalid("gpu backend mode %q: want vmm or legacy", mode)
	}
	n, err := cuda.DeviceCount()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: no CUDA device is visible", cuda.ErrNoDriver)
	}
	b := &Backend{mode: mode, instance: instance, cu: map[int]*cuda.Device{}, gran: map[int]uint64{}, zeroed: map[int]*cuda.Event{}}
	for i := 0; i < n; i++ {
		d, err := cuda.GetDevice(i)
		if err != nil {
			return nil, err
		}
		dev := backend.Device{Index: i}
		if dev.UUID, err = d.UUID(); err != nil {
			return nil, err
		}
		dev.PCIBusID, _ = d.PCIBusID()
		dev.Name, _ = d.Name()
		if dev.Total, err = d.TotalMem(); err != nil {
			return nil, err
		}
		g := uint64(2 << 20)
		if mode == v1.ModeVMM {
			if ok, _ := d.Attribute(cuda.AttrVirtualMemoryManagementSupported); ok == 0 {
				return nil, fmt.Errorf("GPU %d (%s) does not support virtual memory management: use --backend legacy", i, dev.UUID)
			}
			if ok, _ := d.Attribute(cuda.AttrHandleTypePosixFDSupported); ok == 0 {
				return nil, fmt.Errorf("GPU %d (%s) cannot export POSIX file descriptors: use --backend legacy", i, dev.UUID)
			}
			if g, err = d.Granularity(false); err != nil {
				return nil, err
			}
		}
		ev, err := d.NewEvent()
		if err != nil {
			return nil, err
		}
		b.devs = append(b.devs, dev)
		b.cu[i] = d
		b.gran[i] = g
		b.zeroed[i] = ev
	}
	return b, nil
}

// Mode implements backend.Backend.
func (b *Backend) Mode() v1.IPCMode { return b.mode }

// Devices implements backend.Backend.
func (b *Backend) Devices() []backend.Device { return b.devs }

// Granularity implements backend.Backend.
func (b *Backend) Granularity(device int) uint64 { return b.gran[device] }

// Close implements backend.Backend.
func (b *Backend) Close() error {
	var errs []error
	for _, ev := range b.zeroed {
		errs = append(errs, ev.Destroy())
	}
	return errors.Join(errs...)
}

func classify(err error) error {
	if errors.Is(err, cuda.ErrOutOfMemory) {
		return fmt.Errorf("%w: %w", errdefs.ErrOutOfMemory, err)
	}
	return err
}

// NewSegment implements backend.Backend.
func (b *Backend) NewSegment(_ context.Context, device int, size uint64) (backend.Segment, error) {
	d := b.cu[device]
	if d == nil {
		return nil, errdefs.Invalid("no GPU %d", device)
	}
	id := fmt.Sprintf("%s.%s.%d.%d", b.mode, b.instance, device, b.seq.Add(1))
	if b.mode == v1.ModeLegacy {
		p, err := d.MemAlloc(size)
		if err != nil {
			return nil, classify(err)
		}
		h, err := d.IPCGetMemHandle(p)
		if err != nil {
			d.MemFree(p)
			return nil, err
		}
		return &Segment{id: id, d: d, ptr: p, size: size, fd: -1, handle: base64.StdEncoding.EncodeToString(h[:]), legacy: true, zeroed: b.zeroed[device]}, nil
	}
	h, err := d.MemCreate(size)
	if err != nil {
		return nil, classify(err)
	}
	// The mapping below and the exported descriptor keep the memory; the
	// allocation handle itself is not needed after them.
	defer d.MemRelease(h)
	fd, err := d.ExportFD(h)
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(fd)
	p, err := d.Map(h, size)
	if err != nil {
		unix.Close(fd)
		return nil, classify(err)
	}
	return &Segment{id: id, d: d, ptr: p, size: size, fd: fd, zeroed: b.zeroed[device]}, nil
}

// ImportSegment implements backend.Importer (vmm only): the exported
// descriptor of a segment of an earlier instance, passed on by a process
// that still holds it (a client mapping it, or the predecessor handing
// over). The memory lives as long as some descriptor or mapping of it does;
// a re-export of an imported allocation is refused by the driver, so the
// segment keeps fd and hands that to clients.
func (b *Backend) ImportSegment(_ context.Context, device int, id string, size uint64, fd int) (backend.Segment, error) {
	fail := func(err error) (backend.Segment, error) {
		unix.Close(fd)
		return nil, err
	}
	if b.mode != v1.ModeVMM {
		return fail(errdefs.Invalid("%s segments cannot be imported from a descriptor", b.mode))
	}
	d := b.cu[device]
	if d == nil {
		return fail(errdefs.Invalid("no GPU %d", device))
	}
	if !strings.HasPrefix(id, string(v1.ModeVMM)+".") || strings.ContainsAny(id, "/\x00") {
		return fail(errdefs.Invalid("segment %q is not a vmm segment", id))
	}
	h, err := d.ImportFD(fd)
	if err != nil {
		return fail(fmt.Errorf("import segment %s: %w", id, err))
	}
	defer d.MemRelease(h)
	p, err := d.Map(h, size)
	if err != nil {
		return fail(fmt.Errorf("map imported segment %s of %d bytes: %w", id, size, classify(err)))
	}
	unix.CloseOnExec(fd)
	return &Segment{id: id, d: d, ptr: p, size: size, fd: fd, zeroed: b.zeroed[device]}, nil
}

// Segment is one GPU allocation, mapped in the agent.
type Segment struct {
	id     string
	d      *cuda.Device
	ptr    cuda.DevicePtr
	size   uint64
	fd     int
	handle string
	legacy bool
	zeroed *cuda.Event // the device's zero event
}

// ID implements backend.Segment.
func (s *Segment) ID() string { return s.id }

// Handle implements backend.Segment: base64 CUipcMemHandle (legacy) or "".
func (s *Segment) Handle() string { return s.handle }

// FD implements backend.Segment: the VMM descriptor, -1 for legacy.
func (s *Segment) FD() int { return s.fd }

// Size implements pool.Segment.
func (s *Segment) Size() uint64 { return s.size }

// Ptr is the segment's address in the agent.
func (s *Segment) Ptr() cuda.DevicePtr { return s.ptr }

// Device is the segment's GPU.
func (s *Segment) Device() *cuda.Device { return s.d }

// Pinned implements pool.Pinned: legacy segments are never trimmed.
func (s *Segment) Pinned() bool { return s.legacy }

// Zero implements backend.Segment: the queued zero-fill, waited for.
func (s *Segment) Zero(ctx context.Context, off, n uint64) error {
	wait, err := s.ZeroAsync(ctx, off, n)
	if err != nil {
		return err
	}
	return wait()
}

// ZeroAsync implements backend.AsyncZeroer: the zero-fill goes on the
// device's default stream, followed by the device's zero event; wait
// synchronizes on that event. Its latest record may be another zero-fill's,
// queued after this one on the same stream, so waiting on it is never too early.
func (s *Segment) ZeroAsync(_ context.Context, off, n uint64) (func() error, error) {
	if off+n > s.size {
		return nil, fmt.Errorf("zero [%d,%d) outside segment of %d bytes", off, off+n, s.size)
	}
	if n == 0 {
		return func() error { return nil }, nil
	}
	if err := s.d.MemsetAsync(s.ptr+cuda.DevicePtr(off), 0, n, s.zeroed); err != nil {
		return nil, err
	}
	return s.zeroed.Wait, nil
}

// Release implements pool.Segment. It first waits for the zero-fills
// queued on the device: a block is zero-filled when it is freed, so a
// segment trimmed right after its last free may still have one in flight,
// and unmapping under it faults the agent's context
// (CUDA_ERROR_ILLEGAL_ADDRESS). The zero event's latest record follows
// every zero-fill queued so far.
func (s *Segment) Release() error {
	if err := s.zeroed.Wait(); err != nil {
		return fmt.Errorf("release segment %s: wait for its zero-fills: %w", s.id, err)
	}
	if s.legacy {
		return s.d.MemFree(s.ptr)
	}
	return errors.Join(s.d.Unmap(s.ptr, s.size), unix.Close(s.fd))
}
