/* One HTTP/1.x message head, whole, parsed in one call: the fast path of h1.py.
 *
 * parse_head(buf, start, end, request) reads buf[start:end], a complete head ending in CRLF CRLF, and
 * returns a tuple, or None when the head is anything but plain:
 *
 *   request:  (method, target, version, headers, host, content_type, content_encoding,
 *              content_length, transfer_encoding)
 *   response: (status, reason, version, headers, host, content_type, content_encoding,
 *              content_length, transfer_encoding)
 *
 * headers is a tuple of (name, value) str pairs as h1._fields gives them (the name up to the colon, the
 * value without its leading spaces and tabs); content_length and transfer_encoding are lists of values or
 * None; host, content_type and content_encoding the first value or None.
 *
 * It accepts a strict subset of what llhttp accepts: CRLF line ends only, a known method, an
 * origin-form target (from '/'), HTTP/1.0 or HTTP/1.1, token names, printable ASCII in the target,
 * reason and values, digits-only Content-Length at most once (15 digits at most), Transfer-Encoding only
 * as one field "chunked" and never beside Content-Length, no Upgrade field, no interim (1xx) status.
 * Everything else (None) goes to llhttp, which stays the authority: tests check that whatever this
 * accepts, llhttp accepts with the same fields (tests/core/http/test_head_native.py).
 *
 * Why it exists: measured on the replay slice, llhttp's run plus reading its fields back costs about 13k
 * instructions a head from a compiled caller; this costs a fraction (docs/benchmarks.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 tchar */
static unsigned char TCHAR[256];
/* request-target bytes taken here: printable ASCII but for the few llhttp treats specially */
static unsigned char URLCHAR[256];
/* field value and reason bytes: HTAB, SP and VCHAR (obs-text goes to llhttp) */
static unsigned char VCHAR[256];

static PyObject *METHODS[8];
static const char *METHOD_NAMES[8] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", NULL};
static PyObject *V10, *V11;

/* A small direct-mapped cache of ASCII strings: header names and short values repeat from message to
 * message, and a hit saves an allocation. */
#define CACHE_SLOTS 512
#define CACHE_MAX 64
static PyObject *cache[CACHE_SLOTS];

static PyObject *
ascii_str(const unsigned char *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL)
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    return s;
}

static PyObject *
cached_str(const unsigned char *p, Py_ssize_t n)
{
    if (n > CACHE_MAX)
        return ascii_str(p, n);
    unsigned int h = 2166136261u;
    for (Py_ssize_t k = 0; k < n; k++)
        h = (h ^ p[k]) * 16777619u;
    h = (h ^ (unsigned int)n) & (CACHE_SLOTS - 1);
    PyObject *c = cache[h];
    if (c != NULL && PyUnicode_GET_LENGTH(c) == n && memcmp(PyUnicode_1BYTE_DATA(c), p, (size_t)n) == 0) {
        Py_INCREF(c);
        return c;
    }
    PyObject *s = ascii_str(p, n);
    if (s == NULL)
        return NULL;
    Py_XSETREF(cache[h], s);
    Py_INCREF(s);
    return s;
}

/* a new list of the one item s (h1 keeps the framing fields' values as lists) */
static PyObject *
list_of(PyObject *s)
{
    PyObject *l = PyList_New(1);
    if (l != NULL) {
        Py_INCREF(s);
        PyList_SET_ITEM(l, 0, s);
    }
    return l;
}

/* ASCII case-insensitive compare of p[0:n] with the lowercase name */
static int
name_is(const unsigned char *p, Py_ssize_t n, const char *lower, Py_ssize_t size)
{
    if (n != size)
        return 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = p[k];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[k])
            return 0;
    }
    return 1;
}

/* CRLF at p[k] (the head always ends in CRLF CRLF, so p[k + 1] is readable when p[k] is) */
#define IS_CRLF(p, k) ((p)[k] == '\r' && (p)[(k) + 1] == '\n')

static PyObject *
parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_head(buf: bytes, start: int, end: int, request: bool)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || end == -1) && PyErr_Occurred())
        return NULL;
    int request = PyObject_IsTrue(args[3]);
    if (request < 0)
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || end > size || end - start < 4)
        Py_RETURN_NONE;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *p = b + start;
    Py_ssize_t n = end - start;
    if (!(p[n - 4] == '\r' && p[n - 3] == '\n' && p[n - 2] == '\r' && p[n - 1] == '\n'))
        Py_RETURN_NONE;
    Py_ssize_t i = 0;
    PyObject *first = NULL, *second = NULL, *version = NULL;

    if (request) {
        /* METHOD SP target SP HTTP/1.x CRLF */
        while (i < n && p[i] >= 'A' && p[i] <= 'Z')
            i++;
        if (i == 0 || i >= n || p[i] != ' ')
            Py_RETURN_NONE;
        for (int m = 0; METHOD_NAMES[m] != NULL; m++) {
            if ((Py_ssize_t)strlen(METHOD_NAMES[m]) == i && memcmp(p, METHOD_NAMES[m], (size_t)i) == 0) {
                first = METHODS[m];
                break;
            }
        }
        if (first == NULL)
            Py_RETURN_NONE;
        Py_ssize_t t0 = ++i;
        if (i >= n || p[i] != '/')
            Py_RETURN_NONE; /* origin-form only: llhttp decides the others by method */
        while (i < n && URLCHAR[p[i]])
            i++;
        if (i == t0 || i + 11 > n || p[i] != ' ')
            Py_RETURN_NONE;
        Py_ssize_t t1 = i++;
        if (memcmp(p + i, "HTTP/1.", 7) != 0 || !IS_CRLF(p, i + 8))
            Py_RETURN_NONE;
        if (p[i + 7] == '1')
            version = V11;
        else if (p[i + 7] == '0')
            version = V10;
        else
            Py_RETURN_NONE;
        i += 10;
        second = ascii_str(p + t0, t1 - t0);
        if (second == NULL)
            return NULL;
        Py_INCREF(first);
    }
    else {
        /* HTTP/1.x SP DDD SP reason CRLF */
        if (n < 17 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' || p[12] != ' ')
            Py_RETURN_NONE;
        if (p[7] == '1')
            version = V11;
        else if (p[7] == '0')
            version = V10;
        else
            Py_RETURN_NONE;
        if (p[9] < '2' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
            Py_RETURN_NONE;
        long status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        i = 13;
        Py_ssize_t r0 = i;
        while (i < n && VCHAR[p[i]])
            i++;
        if (i + 1 >= n || !IS_CRLF(p, i))
            Py_RETURN_NONE;
        second = cached_str(p + r0, i - r0);
        if (second == NULL)
            return NULL;
        first = PyLong_FromLong(status);
        if (first == NULL) {
            Py_DECREF(second);
            return NULL;
        }
        i += 2;
    }
    Py_INCREF(version);

    PyObject *fields = PyList_New(0);
    PyObject *host = NULL, *ctype = NULL, *cenc = NULL, *clen = NULL, *te = NULL;
    PyObject *result = NULL;
    if (fields == NULL)
        goto done;
    while (!IS_CRLF(p, i)) {
        Py_ssize_t k0 = i;
        while (TCHAR[p[i]])
            i++;
        Py_ssize_t k1 = i;
        if (k1 == k0 || p[i] != ':') {
            goto done;
        }
        i++;
        while (p[i] == ' ' || p[i] == '\t')
            i++;
        Py_ssize_t v0 = i;
        while (VCHAR[p[i]])
            i++;
        if (!IS_CRLF(p, i)) {
            goto done;
        }
        Py_ssize_t v1 = i;
        i += 2;
        const unsigned char *name = p + k0;
        Py_ssize_t nlen = k1 - k0;
        PyObject *ns = cached_str(name, nlen);
        if (ns == NULL)
            goto done;
        PyObject *vs = cached_str(p + v0, v1 - v0);
        if (vs == NULL) {
            Py_DECREF(ns);
            goto done;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(ns);
            Py_DECREF(vs);
            goto done;
        }
        PyTuple_SET_ITEM(pair, 0, ns);
        PyTuple_SET_ITEM(pair, 1, vs);
        int err = PyList_Append(fields, pair);
        Py_DECREF(pair);
        if (err < 0)
            goto done;
        /* the fields h1 reads (its _Msg._note): host, upgrade, content-type, -length, -encoding,
         * transfer-encoding */
        switch (nlen) {
        case 4:
            if (host == NULL && name_is(name, nlen, "host", 4)) {
                host = vs;
                Py_INCREF(vs);
            }
            break;
        case 7:
            if (name_is(name, nlen, "upgrade", 7)) {
                goto done;
            }
            break;
        case 12:
            if (ctype == NULL && name_is(name, nlen, "content-type", 12)) {
                ctype = vs;
                Py_INCREF(vs);
            }
            break;
        case 14:
            if (name_is(name, nlen, "content-length", 14)) {
                if (clen != NULL || te != NULL || v1 == v0 || v1 - v0 > 15) { /* llhttp: overflow */
                    goto done;
                }
                for (Py_ssize_t k = v0; k < v1; k++) {
                    if (p[k] < '0' || p[k] > '9') {
                        goto done;
                    }
                }
                if ((clen = list_of(vs)) == NULL)
                    goto done;
            }
            break;
        case 16:
            if (cenc == NULL && name_is(name, nlen, "content-encoding", 16)) {
                cenc = vs;
                Py_INCREF(vs);
            }
            break;
        case 17:
            if (name_is(name, nlen, "transfer-encoding", 17)) {
                if (te != NULL || clen != NULL || v1 - v0 != 7 || !name_is(p + v0, 7, "chunked", 7)) {
                    goto done;
                }
                if ((te = list_of(vs)) == NULL)
                    goto done;
            }
            break;
        default:
            break;
        }
    }
    if (i + 2 != n) {
        goto done; /* an empty line before the end: not one head */
    }
    {
        PyObject *headers = PyList_AsTuple(fields);
        if (headers == NULL)
            goto done;
        result = PyTuple_New(9);
        if (result == NULL) {
            Py_DECREF(headers);
            goto done;
        }
#define TAKE(x) ((x) != NULL ? (x) : (Py_INCREF(Py_None), Py_None))
        PyTuple_SET_ITEM(result, 0, first);
        PyTuple_SET_ITEM(result, 1, second);
        PyTuple_SET_ITEM(result, 2, version);
        PyTuple_SET_ITEM(result, 3, headers);
        PyTuple_SET_ITEM(result, 4, TAKE(host));
        PyTuple_SET_ITEM(result, 5, TAKE(ctype));
        PyTuple_SET_ITEM(result, 6, TAKE(cenc));
        PyTuple_SET_ITEM(result, 7, TAKE(clen));
        PyTuple_SET_ITEM(result, 8, TAKE(te));
#undef TAKE
        Py_DECREF(fields);
        return result;
    }
done: /* declined (None), or failed with the error set (NULL) */
    Py_XDECREF(fields);
    Py_XDECREF(host);
    Py_XDECREF(ctype);
    Py_XDECREF(cenc);
    Py_XDECREF(clen);
    Py_XDECREF(te);
    Py_DECREF(first);
    Py_DECREF(second);
    Py_DECREF(version);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(buf, start, end, request) -> tuple | None: one plain HTTP/1.x head, whole"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_head", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__head(void)
{
    const char *tchar_extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++)
        TCHAR[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        TCHAR[c] = TCHAR[c - 32] = 1;
    for (const char *q = tchar_extra; *q; q++)
        TCHAR[(unsigned char)*q] = 1;
    for (int c = 0x21; c <= 0x7e; c++)
        URLCHAR[c] = 1;
    for (const char *q = "\"<>\\^`{|}"; *q; q++)
        URLCHAR[(unsigned char)*q] = 0;
    VCHAR['\t'] = 1;
    for (int c = 0x20; c <= 0x7e; c++)
        VCHAR[c] = 1;
    for (int m = 0; METHOD_NAMES[m] != NULL; m++) {
        METHODS[m] = PyUnicode_InternFromString(METHOD_NAMES[m]);
        if (METHODS[m] == NULL)
            return NULL;
    }
    V10 = PyUnicode_InternFromString("1.0");
    V11 = PyUnicode_InternFromString("1.1");
    if (V10 == NULL || V11 == NULL)
        return NULL;
    return PyModule_Create(&module);
}
