// Package cuda is the only cgo in mem-cuda: a thin binding of the CUDA driver
// API functions the agent and its tests use. libcuda.so.1 is opened with
// dlopen at run time and every symbol is looked up (versioned names such as
// _v2 first) and checked before use, so every binary builds without the CUDA
// toolkit and runs without a GPU; then Load returns ErrNoDriver and only the
// host backend is available. CUresult values become *Error at this package's
// edge, and no C type leaves it.
//
// Driver calls that need a context run on a locked OS thread with the
// device's primary context current (the one the CUDA runtime, PyTorch and
// CuPy share).
package cuda
