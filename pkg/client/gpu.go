package client

import (
	"encoding/base64"
	"fmt"
	"strings"
	"sync"

	v1 "github.com/memcuda/memcuda/api/v1"
	"github.com/memcuda/memcuda/cuda"
	"github.com/memcuda/memcuda/pkg/errdefs"
)

// gpuView is a GPU segment mapped into this process.
type gpuView struct {
	dev    *cuda.Device
	ptr    cuda.DevicePtr
	size   uint64
	legacy bool
}

var (
	uuidOnce sync.Once
	uuidMap  map[string]int
	uuidErr  error
)

// OrdinalOf resolves a GPU UUID to its CUDA ordinal in this process.
func OrdinalOf(uuid string) (int, error) {
	uuidOnce.Do(func() {
		n, err := cuda.DeviceCount()
		if err != nil {
			uuidErr = fmt.Errorf("%w: this tensor lives on a GPU: %w", errdefs.ErrFailedPrecondition, err)
			return
		}
		uuidMap = map[string]int{}
		for i := 0; i < n; i++ {
			d, err := cuda.GetDevice(i)
			if err != nil {
				uuidErr = err
				return
			}
			u, err := d.UUID()
			if err != nil {
				uuidErr = err
				return
			}
			uuidMap[strings.ToLower(u)] = i
		}
	})
	if uuidErr != nil {
		return 0, uuidErr
	}
	i, ok := uuidMap[strings.ToLower(uuid)]
	if !ok {
		return 0, fmt.Errorf("%w: GPU %s is not visible in this process (check CUDA_VISIBLE_DEVICES)", errdefs.ErrFailedPrecondition, uuid)
	}
	return i, nil
}

func mapGPU(fd int, info v1.Tensor) (*gpuView, error) {
	ord, err := OrdinalOf(info.DeviceUUID)
	if err != nil {
		return nil, err
	}
	d, err := cuda.GetDevice(ord)
	if err != nil {
		return nil, err
	}
	switch info.IPCMode {
	case v1.ModeLegacy:
		raw, err := base64.StdEncoding.DecodeString(info.IPCHandle)
		if err != nil || len(raw) != 64 {
			return nil, fmt.Errorf("%w: bad legacy ipc_handle", errdefs.ErrInternal)
		}
		var h cuda.IPCMemHandle
		copy(h[:], raw)
		p, err := d.IPCOpenMemHandle(h)
		if err != nil {
			return nil, err
		}
		return &gpuView{dev: d, ptr: p, size: info.SegmentSize, legacy: true}, nil
	case v1.ModeVMM:
		h, err := d.ImportFD(fd)
		if err != nil {
			return nil, err
		}
		defer d.MemRelease(h) // the mapping keeps the memory
		p, err := d.Map(h, info.SegmentSize)
		if err != nil {
			return nil, err
		}
		return &gpuView{dev: d, ptr: p, size: info.SegmentSize}, nil
	}
	return nil, fmt.Errorf("%w: unknown ipc_mode %q", errdefs.ErrInternal, info.IPCMode)
}

func (g *gpuView) close() error {
	if g.legacy {
		return g.dev.IPCCloseMemHandle(g.ptr)
	}
	return g.dev.Unmap(g.ptr, g.size)
}
