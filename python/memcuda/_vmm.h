/* The VMM mapping functions of memcuda._speedups (_vmm.c). */
#ifndef MEMCUDA_VMM_H
#define MEMCUDA_VMM_H

#include <Python.h>

extern PyMethodDef memcuda_vmm_methods[];

#endif
