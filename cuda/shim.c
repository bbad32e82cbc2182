// Run-time binding of the driver functions declared in shim.h.
#include "shim.h"

#include <dlfcn.h>
#include <string.h>

static void *fp[F_COUNT];

/* Names to try per slot, newest first: the driver exports versioned entry
   points (_v2, _v3) for functions whose ABI changed. */
static const char *const names[F_COUNT][3] = {
  [F_cuInit] = {"cuInit"},
  [F_cuDriverGetVersion] = {"cuDriverGetVersion"},
  [F_cuGetErrorName] = {"cuGetErrorName"},
  [F_cuGetErrorString] = {"cuGetErrorString"},
  [F_cuDeviceGetCount] = {"cuDeviceGetCount"},
  [F_cuDeviceGet] = {"cuDeviceGet"},
  [F_cuDeviceGetName] = {"cuDeviceGetName"},
  [F_cuDeviceGetUuid] = {"cuDeviceGetUuid_v2", "cuDeviceGetUuid"},
  [F_cuDeviceGetPCIBusId] = {"cuDeviceGetPCIBusId"},
  [F_cuDeviceGetAttribute] = {"cuDeviceGetAttribute"},
  [F_cuDeviceTotalMem] = {"cuDeviceTotalMem_v2"},
  [F_cuDevicePrimaryCtxRetain] = {"cuDevicePrimaryCtxRetain"},
  [F_cuDevicePrimaryCtxRelease] = {"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"},
  [F_cuCtxSetCurrent] = {"cuCtxSetCurrent"},
  [F_cuCtxSynchronize] = {"cuCtxSynchronize"},
  [F_cuMemGetInfo] = {"cuMemGetInfo_v2"},
  [F_cuMemAlloc] = {"cuMemAlloc_v2"},
  [F_cuMemFree] = {"cuMemFree_v2"},
  [F_cuIpcGetMemHandle] = {"cuIpcGetMemHandle"},
  [F_cuIpcOpenMemHandle] = {"cuIpcOpenMemHandle_v2", "cuIpcOpenMemHandle"},
  [F_cuIpcCloseMemHandle] = {"cuIpcCloseMemHandle"},
  [F_cuMemCreate] = {"cuMemCreate"},
  [F_cuMemRelease] = {"cuMemRelease"},
  [F_cuMemGetAllocationGranularity] = {"cuMemGetAllocationGranularity"},
  [F_cuMemExportToShareableHandle] = {"cuMemExportToShareableHandle"},
  [F_cuMemImportFromShareableHandle] = {"cuMemImportFromShareableHandle"},
  [F_cuMemAddressReserve] = {"cuMemAddressReserve"},
  [F_cuMemAddressFree] = {"cuMemAddressFree"},
  [F_cuMemMap] = {"cuMemMap"},
  [F_cuMemUnmap] = {"cuMemUnmap"},
  [F_cuMemSetAccess] = {"cuMemSetAccess"},
  [F_cuMemsetD8] = {"cuMemsetD8_v2"},
  [F_cuMemsetD8Async] = {"cuMemsetD8Async"},
  [F_cuMemcpyHtoD] = {"cuMemcpyHtoD_v2"},
  [F_cuMemcpyDtoH] = {"cuMemcpyDtoH_v2"},
  [F_cuEventCreate] = {"cuEventCreate"},
  [F_cuEventDestroy] = {"cuEventDestroy_v2", "cuEventDestroy"},
  [F_cuEventRecord] = {"cuEventRecord"},
  [F_cuEventQuery] = {"cuEventQuery"},
  [F_cuEventSynchronize] = {"cuEventSynchronize"},
  [F_cuIpcGetEventHandle] = {"cuIpcGetEventHandle"},
  [F_cuIpcOpenEventHandle] = {"cuIpcOpenEventHandle"},
  [F_cuStreamWaitEvent] = {"cuStreamWaitEvent"},
};

static void *lib;

const char *mc_load(const char *path) {
  static char missing[160];
  if (lib != NULL) return NULL;
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    const char *e = dlerror();
    return e != NULL ? e : "dlopen failed";
  }
  for (int i = 0; i < F_COUNT; i++) {
    for (int j = 0; j < 3 && names[i][j] != NULL && fp[i] == NULL; j++) {
      fp[i] = dlsym(h, names[i][j]);
    }
    if (fp[i] == NULL) {
      strncpy(missing, names[i][0], sizeof missing - 1);
      memset(fp, 0, sizeof fp);
      dlclose(h);
      return missing;
    }
  }
  lib = h;
  return NULL;
}

#define CALL(F, T, ...) \
  do { if (fp[F_##F] == NULL) return MC_CUDA_ERROR_NOT_FOUND; return ((T)fp[F_##F])(__VA_ARGS__); } while (0)

CUresult mc_cuInit(unsigned int f) { CALL(cuInit, CUresult (*)(unsigned int), f); }
CUresult mc_cuDriverGetVersion(int *v) { CALL(cuDriverGetVersion, CUresult (*)(int *), v); }
CUresult mc_cuGetErrorName(CUresult r, const char **s) { CALL(cuGetErrorName, CUresult (*)(CUresult, const char **), r, s); }
CUresult mc_cuGetErrorString(CUresult r, const char **s) { CALL(cuGetErrorString, CUresult (*)(CUresult, const char **), r, s); }
CUresult mc_cuDeviceGetCount(int *n) { CALL(cuDeviceGetCount, CUresult (*)(int *), n); }
CUresult mc_cuDeviceGet(CUdevice *d, int o) { CALL(cuDeviceGet, CUresult (*)(CUdevice *, int), d, o); }
CUresult mc_cuDeviceGetName(char *n, int l, CUdevice d) { CALL(cuDeviceGetName, CUresult (*)(char *, int, CUdevice), n, l, d); }
CUresult mc_cuDeviceGetUuid(CUuuid *u, CUdevice d) { CALL(cuDeviceGetUuid, CUresult (*)(CUuuid *, CUdevice), u, d); }
CUresult mc_cuDeviceGetPCIBusId(char *id, int l, CUdevice d) { CALL(cuDeviceGetPCIBusId, CUresult (*)(char *, int, CUdevice), id, l, d); }
CUresult mc_cuDeviceGetAttribute(int *v, int a, CUdevice d) { CALL(cuDeviceGetAttribute, CUresult (*)(int *, int, CUdevice), v, a, d); }
CUresult mc_cuDeviceTotalMem(size_t *b, CUdevice d) { CALL(cuDeviceTotalMem, CUresult (*)(size_t *, CUdevice), b, d); }
CUresult mc_cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) { CALL(cuDevicePrimaryCtxRetain, CUresult (*)(CUcontext *, CUdevice), c, d); }
CUresult mc_cuDevicePrimaryCtxRelease(CUdevice d) { CALL(cuDevicePrimaryCtxRelease, CUresult (*)(CUdevice), d); }
CUresult mc_cuCtxSetCurrent(CUcontext c) { CALL(cuCtxSetCurrent, CUresult (*)(CUcontext), c); }
CUresult mc_cuCtxSynchronize(void) { CALL(cuCtxSynchronize, CUresult (*)(void)); }
CUresult mc_cuMemGetInfo(size_t *f, size_t *t) { CALL(cuMemGetInfo, CUresult (*)(size_t *, size_t *), f, t); }
CUresult mc_cuMemAlloc(CUdeviceptr *p, size_t n) { CALL(cuMemAlloc, CUresult (*)(CUdeviceptr *, size_t), p, n); }
CUresult mc_cuMemFree(CUdeviceptr p) { CALL(cuMemFree, CUresult (*)(CUdeviceptr), p); }
CUresult mc_cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p) { CALL(cuIpcGetMemHandle, CUresult (*)(CUipcMemHandle *, CUdeviceptr), h, p); }
CUresult mc_cuIpcOpenMemHandle(CUdeviceptr *p, CUipcMemHandle h, unsigned int f) { CALL(cuIpcOpenMemHandle, CUresult (*)(CUdeviceptr *, CUipcMemHandle, unsigned int), p, h, f); }
CUresult mc_cuIpcCloseMemHandle(CUdeviceptr p) { CALL(cuIpcCloseMemHandle, CUresult (*)(CUdeviceptr), p); }
CUresult mc_cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *p, unsigned long long f) { CALL(cuMemCreate, CUresult (*)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long), h, n, p, f); }
CUresult mc_cuMemRelease(CUmemGenericAllocationHandle h) { CALL(cuMemRelease, CUresult (*)(CUmemGenericAllocationHandle), h); }
CUresult mc_cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *p, int o) { CALL(cuMemGetAllocationGranularity, CUresult (*)(size_t *, const CUmemAllocationProp *, int), g, p, o); }
CUresult mc_cuMemExportToShareableHandle(void *s, CUmemGenericAllocationHandle h, int t, unsigned long long f) { CALL(cuMemExportToShareableHandle, CUresult (*)(void *, CUmemGenericAllocationHandle, int, unsigned long long), s, h, t, f); }
CUresult mc_cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *h, void *s, int t) { CALL(cuMemImportFromShareableHandle, CUresult (*)(CUmemGenericAllocationHandle *, void *, int), h, s, t); }
CUresult mc_cuMemAddressReserve(CUdeviceptr *p, size_t n, size_t a, CUdeviceptr addr, unsigned long long f) { CALL(cuMemAddressReserve, CUresult (*)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long), p, n, a, addr, f); }
CUresult mc_cuMemAddressFree(CUdeviceptr p, size_t n) { CALL(cuMemAddressFree, CUresult (*)(CUdeviceptr, size_t), p, n); }
CUresult mc_cuMemMap(CUdeviceptr p, size_t n, size_t o, CUmemGenericAllocationHandle h, unsigned long long f) { CALL(cuMemMap, CUresult (*)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long), p, n, o, h, f); }
CUresult mc_cuMemUnmap(CUdeviceptr p, size_t n) { CALL(cuMemUnmap, CUresult (*)(CUdeviceptr, size_t), p, n); }
CUresult mc_cuMemSetAccess(CUdeviceptr p, size_t n, const CUmemAccessDesc *d, size_t c) { CALL(cuMemSetAccess, CUresult (*)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t), p, n, d, c); }
CUresult mc_cuMemsetD8(CUdeviceptr p, unsigned char v, size_t n) { CALL(cuMemsetD8, CUresult (*)(CUdeviceptr, unsigned char, size_t), p, v, n); }
CUresult mc_cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) { CALL(cuMemsetD8Async, CUresult (*)(CUdeviceptr, unsigned char, size_t, CUstream), p, v, n, s); }
CUresult mc_cuMemcpyHtoD(CUdeviceptr d, const void *s, size_t n) { CALL(cuMemcpyHtoD, CUresult (*)(CUdeviceptr, const void *, size_t), d, s, n); }
CUresult mc_cuMemcpyDtoH(void *d, CUdeviceptr s, size_t n) { CALL(cuMemcpyDtoH, CUresult (*)(void *, CUdeviceptr, size_t), d, s, n); }
CUresult mc_cuEventCreate(CUevent *e, unsigned int f) { CALL(cuEventCreate, CUresult (*)(CUevent *, unsigned int), e, f); }
CUresult mc_cuEventDestroy(CUevent e) { CALL(cuEventDestroy, CUresult (*)(CUevent), e); }
CUresult mc_cuEventRecord(CUevent e, CUstream s) { CALL(cuEventRecord, CUresult (*)(CUevent, CUstream), e, s); }
CUresult mc_cuEventQuery(CUevent e) { CALL(cuEventQuery, CUresult (*)(CUevent), e); }
CUresult mc_cuEventSynchronize(CUevent e) { CALL(cuEventSynchronize, CUresult (*)(CUevent), e); }
CUresult mc_cuIpcGetEventHandle(CUipcEventHandle *h, CUevent e) { CALL(cuIpcGetEventHandle, CUresult (*)(CUipcEventHandle *, CUevent), h, e); }
CUresult mc_cuIpcOpenEventHandle(CUevent *e, CUipcEventHandle h) { CALL(cuIpcOpenEventHandle, CUresult (*)(CUevent *, CUipcEventHandle), e, h); }
CUresult mc_cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) { CALL(cuStreamWaitEvent, CUresult (*)(CUstream, CUevent, unsigned int), s, e, f); }

/* The POSIX-fd handle type passes the descriptor itself where the API takes a pointer. */
CUresult mc_importFD(CUmemGenericAllocationHandle *h, int fd) {
  return mc_cuMemImportFromShareableHandle(h, (void *)(intptr_t)fd, MC_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
}
