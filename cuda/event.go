package cuda

/*
#include <string.h>
#include "shim.h"
*/
import "C"

import "unsafe"

// Event is a CUDA event of the device's primary context.
type Event struct {
	d  *Device
	ev C.CUevent
}

// NewIPCEvent creates an interprocess event (timing disabled, as IPC requires).
func (d *Device) NewIPCEvent() (*Event, error) {
	e := &Event{d: d}
	err := d.Do(func() error {
		return check("cuEventCreate", C.mc_cuEventCreate(&e.ev, C.MC_CU_EVENT_DISABLE_TIMING|C.MC_CU_EVENT_INTERPROCESS))
	})
	return e, err
}

// NewEvent creates an event for this process only (timing disabled).
func (d *Device) NewEvent() (*Event, error) {
	e := &Event{d: d}
	err := d.Do(func() error {
		return check("cuEventCreate", C.mc_cuEventCreate(&e.ev, C.MC_CU_EVENT_DISABLE_TIMING))
	})
	return e, err
}

// OpenIPCEvent opens another process's interprocess event.
func (d *Device) OpenIPCEvent(h IPCEventHandle) (*Event, error) {
	var ch C.CUipcEventHandle
	C.memcpy(unsafe.Pointer(&ch), unsafe.Pointer(&h[0]), 64)
	e := &Event{d: d}
	err := d.Do(func() error { return check("cuIpcOpenEventHandle", C.mc_cuIpcOpenEventHandle(&e.ev, ch)) })
	return e, err
}

// Handle exports the event.
func (e *Event) Handle() (IPCEventHandle, error) {
	var h C.CUipcEventHandle
	var out IPCEventHandle
	err := e.d.Do(func() error { return check("cuIpcGetEventHandle", C.mc_cuIpcGetEventHandle(&h, e.ev)) })
	C.memcpy(unsafe.Pointer(&out[0]), unsafe.Pointer(&h), 64)
	return out, err
}

// Record records the event on the default stream.
func (e *Event) Record() error {
	return e.d.Do(func() error { return check("cuEventRecord", C.mc_cuEventRecord(e.ev, nil)) })
}

// Done reports whether the work before the event's last record is finished.
func (e *Event) Done() (bool, error) {
	var done bool
	err := e.d.Do(func() error {
		r := C.mc_cuEventQuery(e.ev)
		if r == C.MC_CUDA_ERROR_NOT_READY {
			return nil
		}
		done = r == 0
		return check("cuEventQuery", r)
	})
	return done, err
}

// Wait blocks until the event completes.
func (e *Event) Wait() error {
	return e.d.Do(func() error { return check("cuEventSynchronize", C.mc_cuEventSynchronize(e.ev)) })
}

// StreamWait makes the default stream wait for the event.
func (e *Event) StreamWait() error {
	return e.d.Do(func() error { return check("cuStreamWaitEvent", C.mc_cuStreamWaitEvent(nil, e.ev, 0)) })
}

// Destroy frees the event.
func (e *Event) Destroy() error {
	return e.d.Do(func() error { return check("cuEventDestroy", C.mc_cuEventDestroy(e.ev)) })
}
