package cuda

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// ErrNoDriver means libcuda.so.1 could not be loaded or lacks a needed symbol.
var ErrNoDriver = errors.New("CUDA driver not available")

// Error is a failed driver call.
type Error struct {
	Func    string
	Code    int
	Name    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (%d): %s", e.Func, e.Name, e.Code, e.Message)
}

// Is lets errors.Is match on the CUresult code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Func == "" && t.Code == e.Code
}

// Codes callers test for with errors.Is.
var (
	ErrOutOfMemory  = &Error{Code: 2}
	ErrNotReady     = &Error{Code: 600}
	ErrNotSupported = &Error{Code: 801}
	ErrNoDevice     = &Error{Code: 100}
)

func check(fn string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	var name, msg *C.char
	C.mc_cuGetErrorName(r, &name)
	C.mc_cuGetErrorString(r, &msg)
	e := &Error{Func: fn, Code: int(r), Name: "CUDA_ERROR_UNKNOWN"}
	if name != nil {
		e.Name = C.GoString(name)
	}
	if msg != nil {
		e.Message = C.GoString(msg)
	}
	return e
}

var (
	loadOnce sync.Once
	loadErr  error
)

// LibraryPath is the driver library opened by Load ($MEMCUDA_LIBCUDA overrides).
func LibraryPath() string {
	if p := os.Getenv("MEMCUDA_LIBCUDA"); p != "" {
		return p
	}
	return "libcuda.so.1"
}

// Load opens the driver and calls cuInit once; later calls return the first
// result.
func Load() error {
	loadOnce.Do(func() {
		runtime.LockOSThread() // dlerror is per thread
		defer runtime.UnlockOSThread()
		p := C.CString(LibraryPath())
		defer C.free(unsafe.Pointer(p))
		if e := C.mc_load(p); e != nil {
			loadErr = fmt.Errorf("%w: %s", ErrNoDriver, C.GoString(e))
			return
		}
		loadErr = check("cuInit", C.mc_cuInit(0))
	})
	return loadErr
}

// DriverVersion is the driver's CUDA version (e.g. 13000).
func DriverVersion() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var v C.int
	return int(v), check("cuDriverGetVersion", C.mc_cuDriverGetVersion(&v))
}

// DeviceCount is the number of visible devices.
func DeviceCount() (int, error) {
	if err := Load(); err != nil {
		return 0, err
	}
	var n C.int
	return int(n), check("cuDeviceGetCount", C.mc_cuDeviceGetCount(&n))
}

// DevicePtr is a device address.
type DevicePtr uint64

// IPCMemHandle is a legacy CUDA IPC memory handle.
type IPCMemHandle [64]byte

// IPCEventHandle is a CUDA IPC event handle.
type IPCEventHandle [64]byte

// Device is one GPU with its primary context retained.
type Device struct {
	Ordinal int
	dev     C.CUdevice
	ctx     C.CUcontext
}

var (
	devMu   sync.Mutex
	devices = map[int]*Device{}
)

// GetDevice returns the device of an ordinal, retaining its primary context
// for the life of the process.
func GetDevice(ordinal int) (*Device, error) {
	if err := Load(); err != nil {
		return nil, err
	}
	devMu.Lock()
	defer devMu.Unlock()
	if d := devices[ordinal]; d != nil {
		return d, nil
	}
	d := &Device{Ordinal: ordinal}
	if err := check("cuDeviceGet", C.mc_cuDeviceGet(&d.dev, C.int(ordinal))); err != nil {
		return nil, err
	}
	if err := check("cuDevicePrimaryCtxRetain", C.mc_cuDevicePrimaryCtxRetain(&d.ctx, d.dev)); err != nil {
		return nil, err
	}
	devices[ordinal] = d
	return d, nil
}

// Do runs f on a locked OS thread with the device's primary context current.
func (d *Device) Do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := check("cuCtxSetCurrent", C.mc_cuCtxSetCurrent(d.ctx)); err != nil {
		return err
	}
	return f()
}

// Name is the device's product name.
func (d *Device) Name() (string, error) {
	var buf [256]C.char
	if err := check("cuDeviceGetName", C.mc_cuDeviceGetName(&buf[0], C.int(len(buf)), d.dev)); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// UUID is the device's UUID as nvidia-smi prints it (GPU-xxxxxxxx-...).
func (d *Device) UUID() (string, error) {
	var u C.CUuuid
	if err := check("cuDeviceGetUuid", C.mc_cuDeviceGetUuid(&u, d.dev)); err != nil {
		return "", err
	}
	b := C.GoBytes(unsafe.Pointer(&u.bytes[0]), 16)
	return FormatUUID(b), nil
}

// FormatUUID writes 16 bytes as GPU-8-4-4-4-12 hex.
func FormatUUID(b []byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// PCIBusID is the device's PCI bus id (0000:3b:00.0).
func (d *Device) PCIBusID() (string, error) {
	var buf [64]C.char
	if err := check("cuDeviceGetPCIBusId", C.mc_cuDeviceGetPCIBusId(&buf[0], C.int(len(buf)), d.dev)); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// Attribute reads a CUdevice_attribute.
func (d *Device) Attribute(attr int) (int, error) {
	var v C.int
	return int(v), check("cuDeviceGetAttribute", C.mc_cuDeviceGetAttribute(&v, C.int(attr), d.dev))
}

// Attributes used by mem-cuda.
const (
	AttrVirtualMemoryManagementSupported = 102
	AttrHandleTypePosixFDSupported       = 103
)

// TotalMem is the device's memory size.
func (d *Device) TotalMem() (uint64, error) {
	var n C.size_t
	return uint64(n), check("cuDeviceTotalMem", C.mc_cuDeviceTotalMem(&n, d.dev))
}

// MemInfo returns free and total bytes.
func (d *Device) MemInfo() (free, total uint64, err error) {
	err = d.Do(func() error {
		var f, t C.size_t
		e := check("cuMemGetInfo", C.mc_cuMemGetInfo(&f, &t))
		free, total = uint64(f), uint64(t)
		return e
	})
	return
}

// Synchronize waits for all work of the primary context.
func (d *Device) Synchronize() error {
	return d.Do(func() error { return check("cuCtxSynchronize", C.mc_cuCtxSynchronize()) })
}
