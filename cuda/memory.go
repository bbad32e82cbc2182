package cuda

/*
#include <string.h>
#include "shim.h"
*/
import "C"

import "unsafe"

func (d *Device) allocProp() C.CUmemAllocationProp {
	var p C.CUmemAllocationProp
	p._type = C.MC_CU_MEM_ALLOCATION_TYPE_PINNED
	p.requestedHandleTypes = C.MC_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
	p.location._type = C.MC_CU_MEM_LOCATION_TYPE_DEVICE
	p.location.id = C.int(d.Ordinal)
	return p
}

// Granularity is the VMM allocation granularity for POSIX-fd shareable
// memory (recommended: the size that performs best; else the minimum).
func (d *Device) Granularity(recommended bool) (uint64, error) {
	prop := d.allocProp()
	opt := C.int(C.MC_CU_MEM_ALLOC_GRANULARITY_MINIMUM)
	if recommended {
		opt = C.MC_CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
	}
	var g C.size_t
	err := d.Do(func() error {
		return check("cuMemGetAllocationGranularity", C.mc_cuMemGetAllocationGranularity(&g, &prop, opt))
	})
	return uint64(g), err
}

// MemCreate allocates physical memory exportable as a POSIX fd.
func (d *Device) MemCreate(size uint64) (uint64, error) {
	prop := d.allocProp()
	var h C.CUmemGenericAllocationHandle
	err := d.Do(func() error { return check("cuMemCreate", C.mc_cuMemCreate(&h, C.size_t(size), &prop, 0)) })
	return uint64(h), err
}

// MemRelease drops a handle; the memory goes when no mapping uses it.
func (d *Device) MemRelease(h uint64) error {
	return d.Do(func() error { return check("cuMemRelease", C.mc_cuMemRelease(C.CUmemGenericAllocationHandle(h))) })
}

// ExportFD exports a handle as a new file descriptor.
func (d *Device) ExportFD(h uint64) (int, error) {
	var fd C.int
	err := d.Do(func() error {
		return check("cuMemExportToShareableHandle", C.mc_cuMemExportToShareableHandle(unsafe.Pointer(&fd),
			C.CUmemGenericAllocationHandle(h), C.MC_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0))
	})
	return int(fd), err
}

// ImportFD imports a handle from a descriptor (the descriptor stays open).
func (d *Device) ImportFD(fd int) (uint64, error) {
	var h C.CUmemGenericAllocationHandle
	err := d.Do(func() error {
		return check("cuMemImportFromShareableHandle", C.mc_importFD(&h, C.int(fd)))
	})
	return uint64(h), err
}

// Map reserves an address range of size bytes, maps the handle there and
// grants this device read-write access.
func (d *Device) Map(h uint64, size uint64) (DevicePtr, error) {
	var p C.CUdeviceptr
	err := d.Do(func() error {
		if err := check("cuMemAddressReserve", C.mc_cuMemAddressReserve(&p, C.size_t(size), 0, 0, 0)); err != nil {
			return err
		}
		if err := check("cuMemMap", C.mc_cuMemMap(p, C.size_t(size), 0, C.CUmemGenericAllocationHandle(h), 0)); err != nil {
			C.mc_cuMemAddressFree(p, C.size_t(size))
			return err
		}
		var desc C.CUmemAccessDesc
		desc.location._type = C.MC_CU_MEM_LOCATION_TYPE_DEVICE
		desc.location.id = C.int(d.Ordinal)
		desc.flags = C.MC_CU_MEM_ACCESS_FLAGS_PROT_READWRITE
		if err := check("cuMemSetAccess", C.mc_cuMemSetAccess(p, C.size_t(size), &desc, 1)); err != nil {
			C.mc_cuMemUnmap(p, C.size_t(size))
			C.mc_cuMemAddressFree(p, C.size_t(size))
			return err
		}
		return nil
	})
	return DevicePtr(p), err
}

// Unmap undoes Map.
func (d *Device) Unmap(p DevicePtr, size uint64) error {
	return d.Do(func() error {
		if err := check("cuMemUnmap", C.mc_cuMemUnmap(C.CUdeviceptr(p), C.size_t(size))); err != nil {
			return err
		}
		return check("cuMemAddressFree", C.mc_cuMemAddressFree(C.CUdeviceptr(p), C.size_t(size)))
	})
}

// MemAlloc is cuMemAlloc (the legacy backend's segments).
func (d *Device) MemAlloc(size uint64) (DevicePtr, error) {
	var p C.CUdeviceptr
	err := d.Do(func() error { return check("cuMemAlloc", C.mc_cuMemAlloc(&p, C.size_t(size))) })
	return DevicePtr(p), err
}

// MemFree is cuMemFree.
func (d *Device) MemFree(p DevicePtr) error {
	return d.Do(func() error { return check("cuMemFree", C.mc_cuMemFree(C.CUdeviceptr(p))) })
}

// IPCGetMemHandle exports a cuMemAlloc allocation's base.
func (d *Device) IPCGetMemHandle(p DevicePtr) (IPCMemHandle, error) {
	var h C.CUipcMemHandle
	var out IPCMemHandle
	err := d.Do(func() error { return check("cuIpcGetMemHandle", C.mc_cuIpcGetMemHandle(&h, C.CUdeviceptr(p))) })
	C.memcpy(unsafe.Pointer(&out[0]), unsafe.Pointer(&h), 64)
	return out, err
}

// IPCOpenMemHandle maps another process's allocation.
func (d *Device) IPCOpenMemHandle(h IPCMemHandle) (DevicePtr, error) {
	var ch C.CUipcMemHandle
	C.memcpy(unsafe.Pointer(&ch), unsafe.Pointer(&h[0]), 64)
	var p C.CUdeviceptr
	err := d.Do(func() error {
		return check("cuIpcOpenMemHandle", C.mc_cuIpcOpenMemHandle(&p, ch, C.MC_CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS))
	})
	return DevicePtr(p), err
}

// IPCCloseMemHandle unmaps what IPCOpenMemHandle mapped.
func (d *Device) IPCCloseMemHandle(p DevicePtr) error {
	return d.Do(func() error { return check("cuIpcCloseMemHandle", C.mc_cuIpcCloseMemHandle(C.CUdeviceptr(p))) })
}

// Memset sets n bytes at p to v and waits for it: cuMemsetD8 on device
// memory may return before the memory is written, and another process
// (with its own stream) must never see the old bytes after it.
func (d *Device) Memset(p DevicePtr, v byte, n uint64) error {
	return d.Do(func() error {
		if err := check("cuMemsetD8", C.mc_cuMemsetD8(C.CUdeviceptr(p), C.uchar(v), C.size_t(n))); err != nil {
			return err
		}
		return check("cuCtxSynchronize", C.mc_cuCtxSynchronize())
	})
}

// MemsetAsync queues a fill of n bytes at p with v on the default stream
// and records e after it: e completes when the bytes are written.
func (d *Device) MemsetAsync(p DevicePtr, v byte, n uint64, e *Event) error {
	return d.Do(func() error {
		if err := check("cuMemsetD8Async", C.mc_cuMemsetD8Async(C.CUdeviceptr(p), C.uchar(v), C.size_t(n), nil)); err != nil {
			return err
		}
		return check("cuEventRecord", C.mc_cuEventRecord(e.ev, nil))
	})
}

// CopyToDevice copies src to p.
func (d *Device) CopyToDevice(p DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return d.Do(func() error {
		return check("cuMemcpyHtoD", C.mc_cuMemcpyHtoD(C.CUdeviceptr(p), unsafe.Pointer(&src[0]), C.size_t(len(src))))
	})
}

// CopyFromDevice copies len(dst) bytes from p.
func (d *Device) CopyFromDevice(dst []byte, p DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return d.Do(func() error {
		return check("cuMemcpyDtoH", C.mc_cuMemcpyDtoH(unsafe.Pointer(&dst[0]), C.CUdeviceptr(p), C.size_t(len(dst))))
	})
}
