/*
 * Segment mappings in C (part of memcuda._speedups): the driver calls a
 * cold get makes with a segment's descriptor (vmm) or IPC handle (legacy)
 * in hand, without ctypes; a VMM mapping's range is carved from
 * reservations made ahead.
 *
 * A cold get runs right after a wait for the agent, with the process's
 * caches cold, and each ctypes call then costs microseconds of Python
 * around the driver's own time; so does the address reservation each
 * mapping made for itself. Here the calls are plain C, and a mapping's
 * range comes from an arena: large reservations made once, carved in
 * granule steps, their ranges reused after an unmap. Mappings too large for
 * the arena, or not in whole granules, reserve their own range as before.
 *
 * libcuda.so.1 is opened with dlopen (the client has no CUDA toolkit at
 * build time); _cuda.py has already loaded and initialised it through
 * ctypes, so this finds the same library. The GIL is released around the
 * driver calls and held while the arena changes.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x03090000
#endif
#include <Python.h>

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_mapping.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemHandle;
typedef void *CUcontext;
typedef struct {
    int type;
    int id;
} CUmemLocation;
typedef struct {
    CUmemLocation location;
    int flags;
} CUmemAccessDesc;
typedef struct {
    char reserved[64];
} CUipcMemHandle;

#define CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR 1
#define CU_MEM_LOCATION_TYPE_DEVICE 1
#define CU_MEM_ACCESS_FLAGS_PROT_READWRITE 3
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS 1

/* The pieces one mapping may have (the agent's cap on a tensor's pieces
 * is far below). */
#define MAX_PARTS 64

static struct {
    int state; /* 0: not tried, 1: loaded, -1: a symbol is missing */
    CUresult (*ctx_get_current)(CUcontext *);
    CUresult (*ctx_push)(CUcontext);
    CUresult (*ctx_pop)(CUcontext *);
    CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*address_free)(CUdeviceptr, size_t);
    CUresult (*import_handle)(CUmemHandle *, void *, int);
    CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemHandle, unsigned long long);
    CUresult (*unmap)(CUdeviceptr, size_t);
    CUresult (*release)(CUmemHandle);
    CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
    CUresult (*ipc_open)(CUdeviceptr *, CUipcMemHandle, unsigned);
    CUresult (*ipc_close)(CUdeviceptr);
} cu;

/* A driver function, by its _v2 name where the driver has one (as
 * _cuda._fn looks them up). */
static void *sym(void *lib, const char *name)
{
    char v2[64];
    void *f;

    snprintf(v2, sizeof v2, "%s_v2", name);
    f = dlsym(lib, v2);
    return f != NULL ? f : dlsym(lib, name);
}

static int load(void)
{
    void *lib;

    if (cu.state != 0)
        return cu.state;
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
        lib = dlopen("libcuda.so.1", RTLD_NOW);
    cu.state = -1;
    if (lib == NULL)
        return -1;
#define LOOKUP(field, name)                                                                                      \
    if ((*(void **)&cu.field = sym(lib, name)) == NULL)                                                          \
        return -1;
    LOOKUP(ctx_get_current, "cuCtxGetCurrent")
    LOOKUP(ctx_push, "cuCtxPushCurrent")
    LOOKUP(ctx_pop, "cuCtxPopCurrent")
    LOOKUP(reserve, "cuMemAddressReserve")
    LOOKUP(address_free, "cuMemAddressFree")
    LOOKUP(import_handle, "cuMemImportFromShareableHandle")
    LOOKUP(map, "cuMemMap")
    LOOKUP(unmap, "cuMemUnmap")
    LOOKUP(release, "cuMemRelease")
    LOOKUP(set_access, "cuMemSetAccess")
    LOOKUP(ipc_open, "cuIpcOpenMemHandle")
    LOOKUP(ipc_close, "cuIpcCloseMemHandle")
#undef LOOKUP
    cu.state = 1;
    return 1;
}

/* --- the arena ---------------------------------------------------------- */

/* Ranges are carved in granules (the VMM minimum granularity of current
 * GPUs, and the agent's segment sizes are whole granules); a reservation
 * of CHUNK serves mappings of up to ARENA_MAX, larger ones reserve their
 * own. Virtual addresses are plentiful; the chunks stay for the process. */
#define GRANULE (2ULL << 20)
#define CHUNK (64ULL << 30)
#define ARENA_MAX (8ULL << 30)
#define MAX_CHUNKS 64

typedef struct {
    CUdeviceptr at;
    unsigned long long size;
    int chunk;
} range;

static struct {
    CUdeviceptr chunk[MAX_CHUNKS];
    int nchunks;
    range *free; /* by address; neighbours of one chunk are merged */
    size_t nfree, cap;
} arena;

static int chunk_of(CUdeviceptr at)
{
    int i;

    for (i = 0; i < arena.nchunks; i++)
        if (at >= arena.chunk[i] && at - arena.chunk[i] < CHUNK)
            return i;
    return -1;
}

static int insert_free(size_t i, range r)
{
    if (arena.nfree == arena.cap) {
        size_t cap = arena.cap ? 2 * arena.cap : 16;
        range *p = realloc(arena.free, cap * sizeof *p);
        if (p == NULL)
            return -1;
        arena.free = p;
        arena.cap = cap;
    }
    memmove(arena.free + i + 1, arena.free + i, (arena.nfree - i) * sizeof *arena.free);
    arena.free[i] = r;
    arena.nfree++;
    return 0;
}

static void remove_free(size_t i)
{
    memmove(arena.free + i, arena.free + i + 1, (arena.nfree - i - 1) * sizeof *arena.free);
    arena.nfree--;
}

/* A range of size bytes from the free list (first fit), or 0. */
static CUdeviceptr take(unsigned long long size)
{
    size_t i;

    for (i = 0; i < arena.nfree; i++) {
        range *r = &arena.free[i];
        if (r->size >= size) {
            CUdeviceptr at = r->at;
            r->at += size;
            r->size -= size;
            if (r->size == 0)
                remove_free(i);
            return at;
        }
    }
    return 0;
}

/* Gives a range back, merged with its free neighbours in the same chunk.
 * Returns -1 only when the list could not grow (the range is then lost to
 * the arena, not to the process: its reservation stays). */
static int give(CUdeviceptr at, unsigned long long size, int chunk)
{
    size_t i = 0;
    range *prev, *next;

    while (i < arena.nfree && arena.free[i].at < at)
        i++;
    prev = i > 0 ? &arena.free[i - 1] : NULL;
    next = i < arena.nfree ? &arena.free[i] : NULL;
    if (prev != NULL && prev->chunk == chunk && prev->at + prev->size == at) {
        prev->size += size;
        if (next != NULL && next->chunk == chunk && at + size == next->at) {
            prev->size += next->size;
            remove_free(i);
        }
        return 0;
    }
    if (next != NULL && next->chunk == chunk && at + size == next->at) {
        next->at = at;
        next->size += size;
        return 0;
    }
    return insert_free(i, (range){at, size, chunk});
}

/* A new chunk, reserved with the GIL released (the caller's context is
 * current): 0 when the arena has no room for one or the driver refused
 * (the caller then reserves a range of its own). */
static int grow(void)
{
    CUdeviceptr base = 0;
    CUresult rc;

    if (arena.nchunks == MAX_CHUNKS)
        return 0;
    Py_BEGIN_ALLOW_THREADS
    rc = cu.reserve(&base, CHUNK, GRANULE, 0, 0);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return 0;
    if (give(base, CHUNK, arena.nchunks) != 0) {
        cu.address_free(base, CHUNK);
        return 0;
    }
    arena.chunk[arena.nchunks++] = base;
    return 1;
}

/* --- the calls ---------------------------------------------------------- */

/* Makes ctx current on this thread; *pushed says whether to pop. */
static CUresult enter(CUcontext ctx, int *pushed)
{
    CUcontext cur = NULL;
    CUresult rc;

    *pushed = 0;
    rc = cu.ctx_get_current(&cur);
    if (rc != 0 || cur == ctx)
        return rc;
    rc = cu.ctx_push(ctx);
    *pushed = rc == 0;
    return rc;
}

/* The driver loaded and ctx current, for one call of the module: 0, or
 * the failure's CUresult with *what naming the step that failed. */
static CUresult begin(unsigned long long ctx_value, int *pushed, const char **what)
{
    CUresult rc;

    *pushed = 0;
    if (load() != 1) {
        *what = "dlopen libcuda.so.1";
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    rc = enter((CUcontext)(uintptr_t)ctx_value, pushed);
    if (rc != 0)
        *what = "cuCtxPushCurrent";
    return rc;
}

static void leave(int pushed)
{
    CUcontext popped;

    if (pushed)
        cu.ctx_pop(&popped);
}

static PyObject *failure(CUresult rc, const char *what)
{
    return Py_BuildValue("(KIs)", 0ULL, (unsigned)rc, what);
}

/* Unmaps the first n parts mapped from base, every one even after a
 * failure (the GIL released): 0, or the first failure's CUresult. */
static CUresult unmap_parts(CUdeviceptr base, const unsigned long long *sizes, Py_ssize_t n)
{
    Py_ssize_t i;
    CUresult rc = 0;

    for (i = 0; i < n; i++) {
        CUresult r = cu.unmap(base, sizes[i]);
        if (r != 0 && rc == 0)
            rc = r;
        base += sizes[i];
    }
    return rc;
}

/* The length of a mapping's sequence of parts, or -1 with an exception. */
static Py_ssize_t part_count(PyObject *parts)
{
    Py_ssize_t len = PySequence_Size(parts);

    if (len < 1 || len > MAX_PARTS) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "a mapping has 1 to %d parts, not %zd", MAX_PARTS, len);
        return -1;
    }
    return len;
}

static int parse_parts(PyObject *parts, int *fds, unsigned long long *sizes, int *n, unsigned long long *total)
{
    Py_ssize_t i, len = part_count(parts);

    if (len < 0)
        return -1;
    *total = 0;
    for (i = 0; i < len; i++) {
        PyObject *item = PySequence_GetItem(parts, i);
        int ok;
        if (item == NULL)
            return -1;
        ok = PyArg_ParseTuple(item, "iK", &fds[i], &sizes[i]);
        Py_DECREF(item);
        if (!ok)
            return -1;
        if (sizes[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "a part of a mapping has size 0");
            return -1;
        }
        *total += sizes[i];
    }
    *n = (int)len;
    return 0;
}

static const char vmm_map_doc[] =
    "vmm_map(ctx: int, ordinal: int, parts: Sequence[tuple[int, int]]) -> tuple[int, int, str]\n\n"
    "Maps whole VMM allocations, (descriptor, size) each, side by side into one\n"
    "new range with read-write access for device ordinal, ctx (its primary\n"
    "context) current: (base, 0, '') or, on failure with nothing left mapped,\n"
    "(0, the CUresult, the driver call that failed). Unmap with vmm_unmap.";

static PyObject *vmm_map(PyObject *self, PyObject *args)
{
    unsigned long long ctx_value, total;
    int ordinal, n = 0, i, pushed, done = 0;
    PyObject *parts;
    int fds[MAX_PARTS];
    unsigned long long sizes[MAX_PARTS];
    CUdeviceptr base = 0, at;
    CUresult rc;
    const char *what = "";
    CUmemAccessDesc access;
    int whole_granules, from_arena = 0;

    (void)self;
    if (!PyArg_ParseTuple(args, "KiO", &ctx_value, &ordinal, &parts))
        return NULL;
    if (parse_parts(parts, fds, sizes, &n, &total) != 0)
        return NULL;
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = ordinal;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    rc = begin(ctx_value, &pushed, &what);
    if (rc != 0)
        return failure(rc, what);
    whole_granules = total % GRANULE == 0 && total <= ARENA_MAX;
    for (i = 0; i < n && whole_granules; i++)
        whole_granules = sizes[i] % GRANULE == 0;
    if (whole_granules) {
        base = take(total);
        if (base == 0 && grow())
            base = take(total);
        from_arena = base != 0;
    }
    Py_BEGIN_ALLOW_THREADS
    if (base == 0) {
        rc = cu.reserve(&base, total, 0, 0, 0);
        if (rc != 0) {
            what = "cuMemAddressReserve";
            base = 0;
        }
    }
    at = base;
    for (i = 0; rc == 0 && i < n; i++) {
        CUmemHandle h;
        rc = cu.import_handle(&h, (void *)(uintptr_t)fds[i], CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        if (rc != 0) {
            what = "cuMemImportFromShareableHandle";
            break;
        }
        rc = cu.map(at, sizes[i], 0, h, 0);
        cu.release(h); /* the mapping holds the physical memory */
        if (rc != 0) {
            what = "cuMemMap";
            break;
        }
        rc = cu.set_access(at, sizes[i], &access, 1);
        if (rc != 0) {
            cu.unmap(at, sizes[i]);
            what = "cuMemSetAccess";
            break;
        }
        at += sizes[i];
        done++;
    }
    if (rc != 0 && base != 0) {
        unmap_parts(base, sizes, done);
        if (!from_arena)
            cu.address_free(base, total);
    }
    Py_END_ALLOW_THREADS
    if (rc != 0 && from_arena)
        give(base, total, chunk_of(base));
    leave(pushed);
    if (rc != 0)
        return failure(rc, what);
    return Py_BuildValue("(KIs)", (unsigned long long)base, 0u, "");
}

static const char vmm_unmap_doc[] =
    "vmm_unmap(ctx: int, base: int, sizes: Sequence[int]) -> tuple[int, str]\n\n"
    "Unmaps what vmm_map mapped at base (its parts' sizes) and gives the\n"
    "range back: (0, '') or (the CUresult, the driver call that failed).";

static PyObject *vmm_unmap(PyObject *self, PyObject *args)
{
    unsigned long long ctx_value, total = 0;
    CUdeviceptr base;
    PyObject *seq;
    unsigned long long sizes[MAX_PARTS];
    Py_ssize_t len, i;
    int pushed;
    CUresult rc;
    const char *what = "";

    (void)self;
    if (!PyArg_ParseTuple(args, "KKO", &ctx_value, &base, &seq))
        return NULL;
    if ((len = part_count(seq)) < 0)
        return NULL;
    for (i = 0; i < len; i++) {
        PyObject *item = PySequence_GetItem(seq, i);
        if (item == NULL)
            return NULL;
        sizes[i] = PyLong_AsUnsignedLongLong(item);
        Py_DECREF(item);
        if (PyErr_Occurred())
            return NULL;
        total += sizes[i];
    }
    rc = begin(ctx_value, &pushed, &what);
    if (rc != 0)
        return Py_BuildValue("(Is)", (unsigned)rc, what);
    Py_BEGIN_ALLOW_THREADS
    rc = unmap_parts(base, sizes, len);
    Py_END_ALLOW_THREADS
    what = "cuMemUnmap";
    if (rc == 0) {
        int chunk = chunk_of(base);
        if (chunk >= 0)
            give(base, total, chunk); /* a failure only strands the range in the arena */
        else
            rc = cu.address_free(base, total);
        what = "cuMemAddressFree";
    }
    leave(pushed);
    if (rc != 0)
        return Py_BuildValue("(Is)", (unsigned)rc, what);
    return Py_BuildValue("(Is)", 0u, "");
}

static const char ipc_open_doc[] =
    "ipc_open(ctx: int, handle: bytes) -> tuple[int, int, str]\n\n"
    "Opens a legacy CUipcMemHandle (64 bytes) with ctx current (peer access\n"
    "enabled lazily): (the device pointer, 0, '') or (0, the CUresult,\n"
    "'cuIpcOpenMemHandle'). Close with ipc_close.";

static PyObject *ipc_open(PyObject *self, PyObject *args)
{
    unsigned long long ctx_value;
    const char *raw;
    Py_ssize_t len;
    CUipcMemHandle h;
    CUdeviceptr ptr = 0;
    CUresult rc;
    int pushed;
    const char *what = "";

    (void)self;
    if (!PyArg_ParseTuple(args, "Ky#", &ctx_value, &raw, &len))
        return NULL;
    if (len != (Py_ssize_t)sizeof h.reserved) {
        PyErr_Format(PyExc_ValueError, "a legacy IPC handle is %d bytes, not %zd", (int)sizeof h.reserved, len);
        return NULL;
    }
    memcpy(h.reserved, raw, sizeof h.reserved);
    rc = begin(ctx_value, &pushed, &what);
    if (rc != 0)
        return failure(rc, what);
    Py_BEGIN_ALLOW_THREADS
    rc = cu.ipc_open(&ptr, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    Py_END_ALLOW_THREADS
    leave(pushed);
    if (rc != 0)
        return failure(rc, "cuIpcOpenMemHandle");
    return Py_BuildValue("(KIs)", (unsigned long long)ptr, 0u, "");
}

static const char ipc_close_doc[] =
    "ipc_close(ctx: int, ptr: int) -> tuple[int, str]\n\n"
    "Closes what ipc_open opened: (0, '') or (the CUresult, 'cuIpcCloseMemHandle').";

static PyObject *ipc_close(PyObject *self, PyObject *args)
{
    unsigned long long ctx_value;
    CUdeviceptr ptr;
    CUresult rc;
    int pushed;
    const char *what = "";

    (void)self;
    if (!PyArg_ParseTuple(args, "KK", &ctx_value, &ptr))
        return NULL;
    rc = begin(ctx_value, &pushed, &what);
    if (rc != 0)
        return Py_BuildValue("(Is)", (unsigned)rc, what);
    Py_BEGIN_ALLOW_THREADS
    rc = cu.ipc_close(ptr);
    Py_END_ALLOW_THREADS
    leave(pushed);
    return Py_BuildValue("(Is)", (unsigned)rc, rc != 0 ? "cuIpcCloseMemHandle" : "");
}

static const char vmm_arena_doc[] =
    "vmm_arena() -> tuple[int, int]\n\n"
    "The arena's reservations and the bytes free in them (tests).";

static PyObject *vmm_arena(PyObject *self, PyObject *unused)
{
    unsigned long long free_bytes = 0;
    size_t i;

    (void)self;
    (void)unused;
    for (i = 0; i < arena.nfree; i++)
        free_bytes += arena.free[i].size;
    return Py_BuildValue("(iK)", arena.nchunks, free_bytes);
}

PyMethodDef memcuda_mapping_methods[] = {
    {"vmm_map", vmm_map, METH_VARARGS, vmm_map_doc},
    {"vmm_unmap", vmm_unmap, METH_VARARGS, vmm_unmap_doc},
    {"vmm_arena", vmm_arena, METH_NOARGS, vmm_arena_doc},
    {"ipc_open", ipc_open, METH_VARARGS, ipc_open_doc},
    {"ipc_close", ipc_close, METH_VARARGS, ipc_close_doc},
    {NULL, NULL, 0, NULL},
};
