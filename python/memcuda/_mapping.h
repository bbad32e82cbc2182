/* The segment mapping functions of memcuda._speedups (_mapping.c). */
#ifndef MEMCUDA_MAPPING_H
#define MEMCUDA_MAPPING_H

#include <Python.h>

extern PyMethodDef memcuda_mapping_methods[];

#endif
