/*
 * memcuda._speedups: the compact record decoder of _wire in C.
 *
 * Optional: the client works without it (pure Python, same results), and
 * uses it when it was built (setup.py; `make python-ext` for a checkout).
 * The answers of creates and cold gets reach a process whose caches the
 * wait left cold, and decoding the record in Python was the largest part
 * of the client's own work on them. Built against the stable ABI (abi3),
 * so one build serves every CPython from 3.9 on.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x03090000
#endif
#include <Python.h>

/* The record's fields in the layout's order (api/v1/compact.go), as
 * TensorInfo names them, and which of them are numbers. */
#define NFIELDS 21
static const char *const field_names[NFIELDS] = {
    "name", "uid", "dtype", "shape", "device", "device_uuid", "bytes", "ipc_mode", "ipc_handle", "offset",
    "segment_id", "segment_size", "owner_pid", "refcount", "state", "agent", "node", "tenant", "event", "ctime",
    "mtime",
};
enum { KIND_STR, KIND_INT, KIND_SHAPE };
static const char field_kind[NFIELDS] = {
    KIND_STR, KIND_STR, KIND_STR, KIND_SHAPE, KIND_INT, KIND_STR, KIND_INT, KIND_STR, KIND_STR, KIND_INT,
    KIND_STR, KIND_INT, KIND_INT, KIND_INT, KIND_STR, KIND_STR, KIND_STR, KIND_STR, KIND_STR, KIND_INT,
    KIND_INT,
};
/* "R" and the id, the fields, the descriptors' segment ids. */
#define NPARTS (NFIELDS + 2)
#define SEP 0x1f

static PyObject *keys[NFIELDS];
static PyObject *pieces_key;
static PyObject *empty_tuple;

/* A decimal integer as Python's int() reads it (PyLong_FromString), the
 * whole of s[0:n] and nothing else. */
static PyObject *parse_int(const char *s, Py_ssize_t n, const char *what)
{
    char buf[64];
    char *end = NULL;
    PyObject *v;

    if (n <= 0 || n >= (Py_ssize_t)sizeof(buf)) {
        PyErr_Format(PyExc_ValueError, "%s is not a number (%zd characters)", what, n);
        return NULL;
    }
    memcpy(buf, s, (size_t)n);
    buf[n] = '\0';
    if (memchr(buf, '\0', (size_t)n) != NULL) {
        PyErr_Format(PyExc_ValueError, "%s holds a NUL", what);
        return NULL;
    }
    v = PyLong_FromString(buf, &end, 10);
    if (v == NULL) {
        return NULL; /* ValueError from int()'s own parser */
    }
    if (end != buf + n) {
        Py_DECREF(v);
        PyErr_Format(PyExc_ValueError, "%s is not a number: %.40s", what, buf);
        return NULL;
    }
    return v;
}

/* "4096,4096" as (4096, 4096); "" as (). */
static PyObject *parse_shape(const char *s, Py_ssize_t n)
{
    Py_ssize_t dims = 0, i, at = 0, k;
    PyObject *t;

    if (n == 0) {
        Py_INCREF(empty_tuple);
        return empty_tuple;
    }
    dims = 1;
    for (i = 0; i < n; i++) {
        if (s[i] == ',') {
            dims++;
        }
    }
    t = PyTuple_New(dims);
    if (t == NULL) {
        return NULL;
    }
    for (k = 0; k < dims; k++) {
        Py_ssize_t end = at;
        PyObject *d;
        while (end < n && s[end] != ',') {
            end++;
        }
        d = parse_int(s + at, end - at, "a dimension of shape");
        if (d == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SetItem(t, k, d); /* steals d */
        at = end + 1;
    }
    return t;
}

PyDoc_STRVAR(decode_record_doc,
"decode_record(body: bytes) -> tuple[int, dict[str, Any], str]\n\n"
"A compact record's body (\"R\", the id, 21 fields, the descriptors'\n"
"segment ids, separated by 0x1f) as (id, TensorInfo's fields, segment\n"
"ids joined by \",\"). Raises ValueError for a malformed body.");

static PyObject *decode_record(PyObject *self, PyObject *arg)
{
    char *body;
    Py_ssize_t len, i, start = 0;
    const char *part[NPARTS];
    Py_ssize_t part_len[NPARTS];
    int nparts = 0, j;
    PyObject *id, *fields, *fds;

    (void)self;
    if (PyBytes_AsStringAndSize(arg, &body, &len) < 0) {
        return NULL;
    }
    for (i = 0; i <= len; i++) {
        if (i == len || body[i] == SEP) {
            if (nparts < NPARTS) {
                part[nparts] = body + start;
                part_len[nparts] = i - start;
            }
            nparts++;
            start = i + 1;
        }
    }
    if (nparts != NPARTS) {
        PyErr_Format(PyExc_ValueError, "compact record of %d fields, want %d", nparts, NPARTS);
        return NULL;
    }
    if (part_len[0] < 1 || part[0][0] != 'R') {
        PyErr_SetString(PyExc_ValueError, "not a compact record");
        return NULL;
    }
    id = parse_int(part[0] + 1, part_len[0] - 1, "the id");
    if (id == NULL) {
        return NULL;
    }
    fields = PyDict_New();
    if (fields == NULL) {
        Py_DECREF(id);
        return NULL;
    }
    for (j = 0; j < NFIELDS; j++) {
        const char *s = part[j + 1];
        Py_ssize_t n = part_len[j + 1];
        PyObject *v;
        switch (field_kind[j]) {
        case KIND_INT:
            v = parse_int(s, n, field_names[j]);
            break;
        case KIND_SHAPE:
            v = parse_shape(s, n);
            break;
        default:
            v = PyUnicode_DecodeUTF8(s, n, "strict");
        }
        if (v == NULL) {
            goto fail;
        }
        if (PyDict_SetItem(fields, keys[j], v) < 0) {
            Py_DECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    if (PyDict_SetItem(fields, pieces_key, empty_tuple) < 0) {
        goto fail;
    }
    fds = PyUnicode_DecodeUTF8(part[NPARTS - 1], part_len[NPARTS - 1], "strict");
    if (fds == NULL) {
        goto fail;
    }
    return Py_BuildValue("(NNN)", id, fields, fds);
fail:
    Py_DECREF(id);
    Py_DECREF(fields);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_record", decode_record, METH_O, decode_record_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "memcuda._speedups", "The compact record decoder in C (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    int j;

    for (j = 0; j < NFIELDS; j++) {
        keys[j] = PyUnicode_InternFromString(field_names[j]);
        if (keys[j] == NULL) {
            return NULL;
        }
    }
    pieces_key = PyUnicode_InternFromString("pieces");
    empty_tuple = PyTuple_New(0);
    if (pieces_key == NULL || empty_tuple == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
