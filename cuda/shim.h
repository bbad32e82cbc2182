// Minimal hand-written declarations of the CUDA driver API used by mem-cuda,
// resolved at run time with dlopen("libcuda.so.1"): no CUDA toolkit is needed
// to build. Layouts follow cuda.h of CUDA 12 and 13 (unchanged between them).
#ifndef MEMCUDA_SHIM_H
#define MEMCUDA_SHIM_H

#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUevent;
typedef void *CUstream;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct { char reserved[64]; } CUipcMemHandle;
typedef struct { char reserved[64]; } CUipcEventHandle;
typedef struct { unsigned char bytes[16]; } CUuuid;

typedef struct { int type; int id; } CUmemLocation;
typedef struct {
  int type;                 /* CUmemAllocationType: 1 pinned */
  int requestedHandleTypes; /* CUmemAllocationHandleType: 1 POSIX fd */
  CUmemLocation location;
  void *win32HandleMetaData;
  struct {
    unsigned char compressionType;
    unsigned char gpuDirectRDMACapable;
    unsigned short usage;
    unsigned char reserved[4];
  } allocFlags;
} CUmemAllocationProp;
typedef struct { CUmemLocation location; int flags; } CUmemAccessDesc;

enum {
  MC_CU_MEM_ALLOCATION_TYPE_PINNED = 1,
  MC_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1,
  MC_CU_MEM_LOCATION_TYPE_DEVICE = 1,
  MC_CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3,
  MC_CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0,
  MC_CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 1,
  MC_CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1,
  MC_CU_EVENT_DISABLE_TIMING = 2,
  MC_CU_EVENT_INTERPROCESS = 4,
  MC_CUDA_ERROR_NOT_FOUND = 500,
  MC_CUDA_ERROR_NOT_READY = 600,
  MC_CUDA_ERROR_NOT_SUPPORTED = 801,
};

/* One slot per driver function; the loader fills them. */
enum mc_fn {
  F_cuInit, F_cuDriverGetVersion, F_cuGetErrorName, F_cuGetErrorString,
  F_cuDeviceGetCount, F_cuDeviceGet, F_cuDeviceGetName, F_cuDeviceGetUuid, F_cuDeviceGetPCIBusId,
  F_cuDeviceGetAttribute, F_cuDeviceTotalMem,
  F_cuDevicePrimaryCtxRetain, F_cuDevicePrimaryCtxRelease, F_cuCtxSetCurrent, F_cuCtxSynchronize, F_cuMemGetInfo,
  F_cuMemAlloc, F_cuMemFree, F_cuIpcGetMemHandle, F_cuIpcOpenMemHandle, F_cuIpcCloseMemHandle,
  F_cuMemCreate, F_cuMemRelease, F_cuMemGetAllocationGranularity, F_cuMemExportToShareableHandle,
  F_cuMemImportFromShareableHandle, F_cuMemAddressReserve, F_cuMemAddressFree, F_cuMemMap, F_cuMemUnmap,
  F_cuMemSetAccess, F_cuMemsetD8, F_cuMemsetD8Async, F_cuMemcpyHtoD, F_cuMemcpyDtoH,
  F_cuEventCreate, F_cuEventDestroy, F_cuEventRecord, F_cuEventQuery, F_cuEventSynchronize,
  F_cuIpcGetEventHandle, F_cuIpcOpenEventHandle, F_cuStreamWaitEvent,
  F_COUNT
};

/* mc_load dlopens path and resolves every slot; it returns NULL or the name
   of the first required symbol that is missing (or dlerror's text). */
const char *mc_load(const char *path);

CUresult mc_cuInit(unsigned int flags);
CUresult mc_cuDriverGetVersion(int *v);
CUresult mc_cuGetErrorName(CUresult r, const char **s);
CUresult mc_cuGetErrorString(CUresult r, const char **s);
CUresult mc_cuDeviceGetCount(int *n);
CUresult mc_cuDeviceGet(CUdevice *d, int ordinal);
CUresult mc_cuDeviceGetName(char *name, int len, CUdevice d);
CUresult mc_cuDeviceGetUuid(CUuuid *u, CUdevice d);
CUresult mc_cuDeviceGetPCIBusId(char *id, int len, CUdevice d);
CUresult mc_cuDeviceGetAttribute(int *v, int attr, CUdevice d);
CUresult mc_cuDeviceTotalMem(size_t *bytes, CUdevice d);
CUresult mc_cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d);
CUresult mc_cuDevicePrimaryCtxRelease(CUdevice d);
CUresult mc_cuCtxSetCurrent(CUcontext c);
CUresult mc_cuCtxSynchronize(void);
CUresult mc_cuMemGetInfo(size_t *free_, size_t *total);
CUresult mc_cuMemAlloc(CUdeviceptr *p, size_t n);
CUresult mc_cuMemFree(CUdeviceptr p);
CUresult mc_cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p);
CUresult mc_cuIpcOpenMemHandle(CUdeviceptr *p, CUipcMemHandle h, unsigned int flags);
CUresult mc_cuIpcCloseMemHandle(CUdeviceptr p);
CUresult mc_cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop, unsigned long long flags);
CUresult mc_cuMemRelease(CUmemGenericAllocationHandle h);
CUresult mc_cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *prop, int option);
CUresult mc_cuMemExportToShareableHandle(void *shareable, CUmemGenericAllocationHandle h, int type, unsigned long long flags);
CUresult mc_cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *h, void *shareable, int type);
CUresult mc_cuMemAddressReserve(CUdeviceptr *p, size_t n, size_t align, CUdeviceptr addr, unsigned long long flags);
CUresult mc_cuMemAddressFree(CUdeviceptr p, size_t n);
CUresult mc_cuMemMap(CUdeviceptr p, size_t n, size_t offset, CUmemGenericAllocationHandle h, unsigned long long flags);
CUresult mc_cuMemUnmap(CUdeviceptr p, size_t n);
CUresult mc_cuMemSetAccess(CUdeviceptr p, size_t n, const CUmemAccessDesc *desc, size_t count);
CUresult mc_cuMemsetD8(CUdeviceptr p, unsigned char v, size_t n);
CUresult mc_cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s);
CUresult mc_cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t n);
CUresult mc_cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t n);
CUresult mc_cuEventCreate(CUevent *e, unsigned int flags);
CUresult mc_cuEventDestroy(CUevent e);
CUresult mc_cuEventRecord(CUevent e, CUstream s);
CUresult mc_cuEventQuery(CUevent e);
CUresult mc_cuEventSynchronize(CUevent e);
CUresult mc_cuIpcGetEventHandle(CUipcEventHandle *h, CUevent e);
CUresult mc_cuIpcOpenEventHandle(CUevent *e, CUipcEventHandle h);
CUresult mc_cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags);
CUresult mc_importFD(CUmemGenericAllocationHandle *h, int fd);

#endif
