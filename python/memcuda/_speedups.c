/*
 * memcuda._speedups: the client's hot paths in C: encoding a request
 * (_wire), sending it and reading a response frame off the agent's socket
 * (_transport) and decoding a compact record (_wire); with _mapping.c, the
 * driver calls of a VMM mapping or a legacy handle's open (_cuda).
 *
 * Optional: the client works without it (pure Python, same results), and
 * uses it when it was built (setup.py; `make python-ext` for a checkout).
 * The answers of creates and cold gets reach a process whose caches the
 * wait left cold, and the Python around the read and the decode was most
 * of the client's own work on them. Built against the stable ABI (abi3),
 * so one build serves every CPython from 3.9 on.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x03090000
#endif
#include <Python.h>

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_mapping.h"

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
static PyObject *empty_tuple;
/* Every field's key (values None) and pieces (an empty tuple: a compact
 * record is never in pieces): copied, a record's dict of the right size
 * from the start. */
static PyObject *record_template;

/* The last value of each string field and its bytes: most fields of one
 * client's answers repeat (dtype, mode, segment, agent, node, state), and
 * one object serves them all. Under the GIL. */
#define MAX_REUSED 96
static struct {
    PyObject *value;
    Py_ssize_t len;
    char bytes[MAX_REUSED];
} last_str[NFIELDS];

static PyObject *field_str(int j, const char *s, Py_ssize_t n)
{
    PyObject *v;

    if (last_str[j].value != NULL && last_str[j].len == n && memcmp(last_str[j].bytes, s, (size_t)n) == 0) {
        Py_INCREF(last_str[j].value);
        return last_str[j].value;
    }
    v = PyUnicode_DecodeUTF8(s, n, "strict");
    if (v != NULL && n <= MAX_REUSED) {
        Py_XDECREF(last_str[j].value);
        Py_INCREF(v);
        last_str[j].value = v;
        last_str[j].len = n;
        memcpy(last_str[j].bytes, s, (size_t)n);
    }
    return v;
}

/* A decimal integer as Python's int() reads it (PyLong_FromString), the
 * whole of s[0:n] and nothing else. Plain digits (what the agent writes)
 * are read here; anything else goes to int()'s own parser. */
static PyObject *parse_int(const char *s, Py_ssize_t n, const char *what)
{
    char buf[64];
    char *end = NULL;
    PyObject *v;

    if (n > 0 && n <= 18) {
        long long x = 0;
        Py_ssize_t i;

        for (i = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            x = x * 10 + (s[i] - '0');
        }
        if (i == n) {
            return PyLong_FromLongLong(x);
        }
    }
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
    fields = PyDict_Copy(record_template);
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
            v = field_str(j, s, n);
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


/* Response frames (api/v1/frame.go): "MCU1", version 1, kind 2, the
 * count of descriptors that came with it, a reserved 0, the body's length
 * (big-endian), then the body. */
#define HEADER_SIZE 12
#define MAX_FDS 8
#define MAX_BODY (1 << 20)
#define READ_SIZE 65536

#ifndef MSG_CMSG_CLOEXEC
#include <fcntl.h>
#define MSG_CMSG_CLOEXEC 0
#define SET_CLOEXEC(fd) fcntl((fd), F_SETFD, FD_CLOEXEC)
#else
#define SET_CLOEXEC(fd) ((void)0)
#endif

/* The body length of the response frame whose header h is, with its count
 * of descriptors in *nfd; -1 for a header this path does not take (the
 * caller's parser names what is wrong with it). */
static Py_ssize_t response_body_len(const unsigned char *h, int *nfd)
{
    uint32_t n;

    if (memcmp(h, "MCU1", 4) != 0 || h[4] != 1 || h[5] != 2 || h[6] > MAX_FDS || h[7] != 0) {
        return -1;
    }
    n = ((uint32_t)h[8] << 24) | ((uint32_t)h[9] << 16) | ((uint32_t)h[10] << 8) | (uint32_t)h[11];
    if (n > MAX_BODY) {
        return -1;
    }
    *nfd = h[6];
    return (Py_ssize_t)n;
}

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Appends the descriptors of msg's SCM_RIGHTS messages to fds (a list);
 * on failure closes those not appended and returns -1. */
static int keep_fds(struct msghdr *msg, PyObject *fds)
{
    struct cmsghdr *c;
    int failed = 0;

    for (c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        size_t i, n;
        const unsigned char *data;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        data = CMSG_DATA(c);
        for (i = 0; i < n; i++) {
            int fd;
            PyObject *v;

            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (failed) {
                close(fd);
                continue;
            }
            SET_CLOEXEC(fd);
            v = PyLong_FromLong(fd);
            if (v == NULL || PyList_Append(fds, v) < 0) {
                Py_XDECREF(v);
                close(fd);
                failed = 1;
                continue;
            }
            Py_DECREF(v);
        }
    }
    return failed ? -1 : 0;
}

/* One recvmsg of up to size bytes into p, without the GIL: polling without
 * blocking for spin_ns first when it is positive, then blocking (the
 * socket's SO_RCVTIMEO bounds that wait: EAGAIN). The descriptors that
 * came go to fds. Returns the count of bytes (0 at the end of the stream),
 * or -1 with an exception set. */
static Py_ssize_t recv_some(int fd, char *p, size_t size, PyObject *fds, long long spin_ns)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    } ctl;
    struct iovec iov;
    struct msghdr msg;
    ssize_t got;
    int err;

    for (;;) {
        memset(&msg, 0, sizeof(msg));
        iov.iov_base = p;
        iov.iov_len = size;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof(ctl.buf);
        Py_BEGIN_ALLOW_THREADS
        got = -1;
        err = EAGAIN;
        if (spin_ns > 0) {
            long long deadline = now_ns() + spin_ns;
            do {
                got = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                err = got < 0 ? errno : 0;
            } while (got < 0 && (err == EAGAIN || err == EWOULDBLOCK) && now_ns() < deadline);
        }
        if (got < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
            got = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
            err = got < 0 ? errno : 0;
        }
        Py_END_ALLOW_THREADS
        if (got >= 0) {
            break;
        }
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return -1;
            }
            continue;
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError); /* EAGAIN: BlockingIOError */
        return -1;
    }
    if (keep_fds(&msg, fds) < 0) {
        return -1;
    }
    return (Py_ssize_t)got;
}

PyDoc_STRVAR(read_frame_doc,
"read_frame(fd: int, buf: bytearray, fds: list[int], spin_ns: int) -> tuple[int, bytes] | None\n\n"
"The next response frame on the socket fd as (descriptor count, body),\n"
"reading until buf (the bytes read and not yet taken) holds it whole and\n"
"taking it off buf's front. Descriptors that arrive are appended to fds.\n"
"Polls without blocking for spin_ns first (0: blocks at once). None when\n"
"buf starts with a header other than a valid response's (the caller's\n"
"parser says what is wrong). Raises EOFError at the end of the stream,\n"
"BlockingIOError when the socket's receive timeout ran out, OSError.");

/* read_frame's work, its arguments checked. */
static PyObject *take_frame(int fd, PyObject *buf, PyObject *fds, long long spin_ns)
{
    int nfd = 0;
    PyObject *body;
    char *chunk = NULL;
    size_t chunk_size = 0;

    for (;;) {
        Py_ssize_t have = PyByteArray_Size(buf), n = -1, got;
        size_t want = READ_SIZE;

        if (have >= HEADER_SIZE) {
            char *b = PyByteArray_AsString(buf);

            n = response_body_len((const unsigned char *)b, &nfd);
            if (n < 0) {
                free(chunk);
                Py_RETURN_NONE;
            }
            if (have >= HEADER_SIZE + n) {
                Py_ssize_t rest = have - HEADER_SIZE - n;

                free(chunk);
                body = PyBytes_FromStringAndSize(b + HEADER_SIZE, n);
                if (body == NULL) {
                    return NULL;
                }
                /* The allocation may have run a collection: the buffer's
                 * address is read again (its bytes are only ever changed
                 * under the client's lock, which this caller holds). */
                b = PyByteArray_AsString(buf);
                memmove(b, b + HEADER_SIZE + n, (size_t)rest);
                if (PyByteArray_Resize(buf, rest) < 0) {
                    Py_DECREF(body);
                    return NULL;
                }
                return Py_BuildValue("(iN)", nfd, body);
            }
            if ((size_t)(HEADER_SIZE + n - have) > want) {
                want = (size_t)(HEADER_SIZE + n - have);
            }
        }
        if (want > chunk_size) {
            free(chunk);
            chunk = malloc(want);
            if (chunk == NULL) {
                return PyErr_NoMemory();
            }
            chunk_size = want;
        }
        got = recv_some(fd, chunk, want, fds, spin_ns);
        if (got <= 0) {
            free(chunk);
            if (got == 0) {
                PyErr_SetString(PyExc_EOFError, "the agent closed the connection");
            }
            return NULL;
        }
        if (PyByteArray_Resize(buf, have + got) < 0) {
            free(chunk);
            return NULL;
        }
        memcpy(PyByteArray_AsString(buf) + have, chunk, (size_t)got);
    }
}

static int frame_args(PyObject *buf, PyObject *fds, const char *who)
{
    if (!PyByteArray_Check(buf) || !PyList_Check(fds)) {
        PyErr_Format(PyExc_TypeError, "%s takes a bytearray and a list", who);
        return -1;
    }
    return 0;
}

static PyObject *read_frame(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *buf, *fds;
    long long spin_ns;

    (void)self;
    if (!PyArg_ParseTuple(args, "iOOL:read_frame", &fd, &buf, &fds, &spin_ns) || frame_args(buf, fds, "read_frame") < 0) {
        return NULL;
    }
    return take_frame(fd, buf, fds, spin_ns);
}

PyDoc_STRVAR(call_doc,
"call(fd: int, frame: bytes, buf: bytearray, fds: list[int], spin_ns: int) -> tuple[int, bytes] | int | None\n\n"
"Sends frame whole on the socket fd, then reads the next response frame\n"
"as read_frame does (and answers as it does). When the send fails, its\n"
"errno (an int) instead, nothing read: the send's receive timeout ran\n"
"out (EAGAIN) or the connection broke.");

static PyObject *call(PyObject *self, PyObject *args)
{
    int fd, err = 0;
    PyObject *frame, *buf, *fds;
    long long spin_ns;
    char *p;
    Py_ssize_t left;

    (void)self;
    if (!PyArg_ParseTuple(args, "iSOOL:call", &fd, &frame, &buf, &fds, &spin_ns) || frame_args(buf, fds, "call") < 0) {
        return NULL;
    }
    /* The bytes object is immutable and held by the caller: its buffer
     * may be read without the GIL. */
    p = PyBytes_AsString(frame);
    left = PyBytes_Size(frame);
    while (left > 0) {
        ssize_t n;

        Py_BEGIN_ALLOW_THREADS
        n = send(fd, p, (size_t)left, MSG_NOSIGNAL);
        err = n < 0 ? errno : 0;
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            p += n;
            left -= n;
            continue;
        }
        if (err != EINTR) {
            return PyLong_FromLong(err);
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    return take_frame(fd, buf, fds, spin_ns);
}

/* Request frames: the JSON body the Go encoder writes for v1.Request, its
 * fields in order and left out when empty, for the fields and characters
 * whose encoding needs no escape. */

static const char request_header[HEADER_SIZE] = {'M', 'C', 'U', '1', 1, 1, 0, 0, 0, 0, 0, 0};

/* The bytes a growing request is written into. */
struct out {
    char *p;
    size_t len, cap;
};

static int out_put(struct out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        char *p;

        while (cap < o->len + n) {
            cap *= 2;
        }
        p = realloc(o->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    return 0;
}

/* Whether c needs no escape in a JSON string and is one of the characters
 * names, dtypes and devices use (_wire._PLAIN). */
static int plain_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == ':' || c == '/' || c == '@' || c == '+' || c == '=' || c == '-';
}

/* Appends ,"key":"value" for a str value of plain characters (an empty
 * one only when always is set: the fields with omitempty leave it out).
 * Returns 1 when written or left out, 0 when the value is not plain (the
 * caller leaves the request to Python's encoder), -1 on an error. */
static int put_field(struct out *o, const char *key, PyObject *value, int always)
{
    PyObject *ascii;
    char *s;
    Py_ssize_t n, i;
    int ok;

    if (!PyUnicode_Check(value)) {
        return 0;
    }
    if (PyUnicode_GetLength(value) == 0 && !always) {
        return 1;
    }
    ascii = PyUnicode_AsASCIIString(value);
    if (ascii == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (PyBytes_AsStringAndSize(ascii, &s, &n) < 0) {
        Py_DECREF(ascii);
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (!plain_char((unsigned char)s[i])) {
            Py_DECREF(ascii);
            return 0;
        }
    }
    ok = out_put(o, ",\"", 2) == 0 && out_put(o, key, strlen(key)) == 0 && out_put(o, "\":\"", 3) == 0 &&
         out_put(o, s, (size_t)n) == 0 && out_put(o, "\"", 1) == 0;
    Py_DECREF(ascii);
    return ok ? 1 : -1;
}

/* Appends ,"shape":[d,...] for a non-empty sequence of ints (None or
 * empty: nothing). Returns as put_field. */
static int put_shape(struct out *o, PyObject *shape)
{
    Py_ssize_t n, i;
    char num[32];

    if (shape == Py_None) {
        return 1;
    }
    if (!PyList_Check(shape) && !PyTuple_Check(shape)) {
        return 0;
    }
    n = PySequence_Size(shape);
    if (n < 0) {
        return -1;
    }
    if (n == 0) {
        return 1;
    }
    if (out_put(o, ",\"shape\":[", 10) < 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        PyObject *d = PySequence_GetItem(shape, i);
        long long v;
        int len;

        if (d == NULL) {
            return -1;
        }
        if (!PyLong_Check(d) || PyBool_Check(d)) {
            Py_DECREF(d);
            return 0;
        }
        v = PyLong_AsLongLong(d);
        Py_DECREF(d);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear(); /* out of range: Python's encoder writes it */
            return 0;
        }
        len = snprintf(num, sizeof(num), i ? ",%lld" : "%lld", v);
        if (out_put(o, num, (size_t)len) < 0) {
            return -1;
        }
    }
    return out_put(o, "]", 1) < 0 ? -1 : 1;
}

PyDoc_STRVAR(encode_request_doc,
"encode_request(id: int, op: str, name: str, dtype: str, shape: list[int] | tuple[int, ...] | None,\n"
"               device: str, event: str, segment: str) -> bytes | None\n\n"
"A request frame, byte for byte what the Go encoder writes, when every\n"
"string is of the characters that need no escape ([A-Za-z0-9_.:/@+=-])\n"
"and shape holds ints; None otherwise (Python's encoder takes those).");

static PyObject *encode_request(PyObject *self, PyObject *args)
{
    unsigned long long id;
    PyObject *op, *name, *dtype, *shape, *device, *event, *segment, *frame = NULL;
    struct out o = {NULL, 0, 0};
    char head[48];
    int len, r;
    size_t body;

    (void)self;
    if (!PyArg_ParseTuple(args, "KOOOOOOO:encode_request", &id, &op, &name, &dtype, &shape, &device, &event,
                          &segment)) {
        return NULL;
    }
    /* The header first (version 1, a request, no descriptors), its body
     * length filled in at the end. */
    len = snprintf(head, sizeof(head), "{\"id\":%llu", id);
    if (out_put(&o, request_header, HEADER_SIZE) < 0 || out_put(&o, head, (size_t)len) < 0) {
        goto done;
    }
    /* v1.Request's fields in order; the shape (no key here) is a list. */
    {
        const char *keys[] = {"op", "name", "dtype", NULL, "device", "event", "segment"};
        PyObject *values[] = {op, name, dtype, shape, device, event, segment};
        int j;

        for (j = 0, r = 1; r == 1 && j < (int)(sizeof(keys) / sizeof(keys[0])); j++) {
            r = keys[j] ? put_field(&o, keys[j], values[j], j == 0) : put_shape(&o, values[j]);
        }
    }
    if (r == 1) {
        r = out_put(&o, "}", 1) < 0 ? -1 : 1;
    }
    if (r == 0 || (r == 1 && o.len - HEADER_SIZE > MAX_BODY)) {
        frame = Py_None;
        Py_INCREF(frame);
        goto done;
    }
    if (r < 0) {
        goto done;
    }
    body = o.len - HEADER_SIZE;
    o.p[8] = (char)(body >> 24);
    o.p[9] = (char)(body >> 16);
    o.p[10] = (char)(body >> 8);
    o.p[11] = (char)body;
    frame = PyBytes_FromStringAndSize(o.p, (Py_ssize_t)o.len);
done:
    free(o.p);
    return frame;
}

static PyMethodDef methods[] = {
    {"encode_request", encode_request, METH_VARARGS, encode_request_doc},
    {"read_frame", read_frame, METH_VARARGS, read_frame_doc},
    {"call", call, METH_VARARGS, call_doc},
    {"decode_record", decode_record, METH_O, decode_record_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "memcuda._speedups", "The client's request encoder, frame reader (alone or after a send), compact record decoder and mapping calls in C (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    int j, rc;
    PyObject *pieces_key, *m;

    for (j = 0; j < NFIELDS; j++) {
        keys[j] = PyUnicode_InternFromString(field_names[j]);
        if (keys[j] == NULL) {
            return NULL;
        }
    }
    pieces_key = PyUnicode_InternFromString("pieces");
    empty_tuple = PyTuple_New(0);
    record_template = PyDict_New();
    if (pieces_key == NULL || empty_tuple == NULL || record_template == NULL) {
        return NULL;
    }
    for (j = 0; j < NFIELDS; j++) {
        if (PyDict_SetItem(record_template, keys[j], Py_None) < 0) {
            return NULL;
        }
    }
    rc = PyDict_SetItem(record_template, pieces_key, empty_tuple);
    Py_DECREF(pieces_key); /* the template holds it */
    if (rc < 0) {
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddFunctions(m, memcuda_mapping_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
