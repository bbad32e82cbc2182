/*
 * A stand-in libcuda.so.1 for test_mappings.py, on machines without a GPU:
 * the driver calls of a VMM mapping as bookkeeping, strict where the real
 * driver is strict (a map inside one reservation, never over another
 * mapping, of the whole allocation; a free of exactly what was reserved),
 * with counters the test reads. It checks the client's use of the calls
 * (ranges, rollback, leaks), not CUDA: the GPU tests map real memory.
 */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define MAXN 4096
#define INVALID_VALUE 1
#define INVALID_HANDLE 400

typedef unsigned long long u64;
typedef struct { u64 at, size; } span;
static span res[MAXN], maps[MAXN];
static int nres, nmaps, handles;
static u64 next_va = 0x200000000000ULL;
static int ctx_depth;

int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *dev, int i) { *dev = i; return i == 0 ? 0 : INVALID_VALUE; }
int cuDeviceGetUuid(char *uuid, int dev) { (void)dev; memset(uuid, 0xab, 16); return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = (void *)0x1234; return 0; }
int cuCtxGetCurrent(void **ctx) { *ctx = ctx_depth ? (void *)0x1234 : NULL; return 0; }
/* A context the test names BAD_CTX cannot be made current. */
#define BAD_CTX ((void *)0xbad)
int cuCtxPushCurrent_v2(void *ctx)
{
    if (ctx == BAD_CTX)
        return INVALID_VALUE;
    ctx_depth++;
    return 0;
}
int cuCtxPopCurrent_v2(void **ctx) { *ctx = (void *)0x1234; ctx_depth--; return 0; }
int cuGetErrorName(int rc, const char **s) { *s = rc == INVALID_HANDLE ? "CUDA_ERROR_INVALID_HANDLE" : "CUDA_ERROR_INVALID_VALUE"; return 0; }
int cuGetErrorString(int rc, const char **s) { (void)rc; *s = "refused by the test driver"; return 0; }

int cuMemAddressReserve(u64 *at, size_t size, size_t align, u64 addr, u64 flags)
{
    (void)addr; (void)flags;
    if (size == 0 || nres == MAXN)
        return INVALID_VALUE;
    if (align == 0)
        align = 2 << 20;
    next_va = (next_va + align - 1) / align * align;
    res[nres].at = *at = next_va;
    res[nres++].size = size;
    next_va += size + (2 << 20); /* a gap: ranges of two reservations never touch */
    return 0;
}

/* Removes exactly [at, at+size) from a book of n spans, or refuses. */
static int drop(span *book, int *n, u64 at, u64 size)
{
    for (int i = 0; i < *n; i++)
        if (book[i].at == at && book[i].size == size) {
            book[i] = book[--*n];
            return 0;
        }
    return INVALID_VALUE;
}

int cuMemAddressFree(u64 at, size_t size) { return drop(res, &nres, at, size); }

int cuMemImportFromShareableHandle(u64 *h, void *os_handle, int type)
{
    struct stat st;
    int fd = (int)(intptr_t)os_handle;
    if (type != 1 || fstat(fd, &st) != 0)
        return INVALID_HANDLE;
    *h = ((u64)st.st_size << 16) | (u64)fd; /* the allocation's size travels in the handle */
    handles++;
    return 0;
}

int cuMemRelease(u64 h) { (void)h; handles--; return 0; }

int cuMemMap(u64 at, size_t size, size_t offset, u64 h, u64 flags)
{
    int inside = 0;
    (void)flags;
    if (offset != 0 || size != h >> 16 || at % (2 << 20) != 0)
        return INVALID_VALUE;
    for (int i = 0; i < nres; i++)
        inside |= at >= res[i].at && at + size <= res[i].at + res[i].size;
    for (int i = 0; i < nmaps; i++)
        if (at < maps[i].at + maps[i].size && maps[i].at < at + size)
            return INVALID_VALUE;
    if (!inside || nmaps == MAXN)
        return INVALID_VALUE;
    maps[nmaps].at = at;
    maps[nmaps++].size = size;
    return 0;
}

int cuMemUnmap(u64 at, size_t size) { return drop(maps, &nmaps, at, size); }

int cuMemSetAccess(u64 at, size_t size, const void *desc, size_t n)
{
    (void)desc;
    for (int i = 0; i < nmaps; i++)
        if (maps[i].at == at && maps[i].size == size)
            return n == 1 ? 0 : INVALID_VALUE;
    return INVALID_VALUE;
}

static int opened;

typedef struct { char reserved[64]; } ipc_handle;

/* A handle opens when its first byte is 'h'; the pointer is its second. */
int cuIpcOpenMemHandle_v2(u64 *ptr, ipc_handle h, unsigned flags)
{
    if (h.reserved[0] != 'h' || flags != 1)
        return INVALID_VALUE;
    *ptr = 0x300000000000ULL + ((u64)(unsigned char)h.reserved[1] << 21);
    opened++;
    return 0;
}

int cuIpcCloseMemHandle(u64 ptr) { (void)ptr; return opened-- > 0 ? 0 : INVALID_VALUE; }

/* The counters: live reservations, mappings, imported handles, the
 * depth of pushed contexts and open IPC handles. */
int fake_opened(void) { return opened; }
int fake_reservations(void) { return nres; }
int fake_mappings(void) { return nmaps; }
int fake_handles(void) { return handles; }
int fake_context_depth(void) { return ctx_depth; }
