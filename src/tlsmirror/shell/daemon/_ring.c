/* The TPACKET_V3 ring's blocks read in one call: the fast path of capture.LiveSocket.
 *
 * read_blocks(ring, block, block_bytes, blocks, limit, frames, stamps, ether) reads, from block index
 * `block` on, every block the kernel has handed to user space (block_status has TP_STATUS_USER) until
 * `limit` frames are read or a block is still the kernel's. Each frame (bytes, from tp_mac for
 * tp_snaplen bytes, the VLAN tag the NIC took off put back when `ether`) is appended to `frames` and its
 * kernel time (tp_sec + tp_nsec * 1e-9) to `stamps`; each block read goes back to the kernel
 * (TP_STATUS_KERNEL). Returns (next block index, frames read, bytes read).
 *
 * `ring` is any writable buffer (the mmap of the ring; tests give a bytearray laid out the same way).
 * Offsets the headers give are checked against the block: a header that points outside it raises
 * ValueError (the frames appended before it stay appended; that block is not given back).
 *
 * Why it exists: the same loop in Python costs about a microsecond a frame (a struct unpack, a slice and
 * a float per frame), a tenth of a live worker's CPU at the benchmark's rates (docs/benchmarks.md).
 * capture.py keeps that loop as the fallback and tests check both give the same frames and times.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TP_STATUS_KERNEL 0u
#define TP_STATUS_USER 1u
#define TP_STATUS_VLAN_VALID (1u << 4)
#define TP_STATUS_VLAN_TPID_VALID (1u << 6)
/* the frame header's fields read here end at 38 (tp_vlan_tpid); a frame takes at least this much */
#define HDR_MIN 40

static inline uint32_t
u32_at(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t
u16_at(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static PyObject *
read_blocks(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ring, *frames, *stamps;
    Py_ssize_t block, block_bytes, blocks, limit;
    int ether;
    if (!PyArg_ParseTuple(args, "OnnnnO!O!p", &ring, &block, &block_bytes, &blocks, &limit, &PyList_Type,
                          &frames, &PyList_Type, &stamps, &ether))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(ring, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (blocks <= 0 || block_bytes < 48 || block < 0 || block >= blocks || view.len < block_bytes * blocks) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "ring geometry does not fit the buffer");
        return NULL;
    }
    unsigned char *mem = (unsigned char *)view.buf;
    Py_ssize_t n = 0, total = 0;
    PyObject *result = NULL;
    while (n < limit) {
        unsigned char *base = mem + block * block_bytes;
        uint32_t *status_p = (uint32_t *)(base + 8);
        uint32_t status = __atomic_load_n(status_p, __ATOMIC_ACQUIRE); /* then the block's contents */
        if (!(status & TP_STATUS_USER))
            break;
        uint32_t count = u32_at(base + 12);
        Py_ssize_t off = (Py_ssize_t)u32_at(base + 16);
        if ((Py_ssize_t)count > block_bytes / HDR_MIN) {
            PyErr_SetString(PyExc_ValueError, "ring block claims more frames than it can hold");
            goto done;
        }
        for (uint32_t i = 0; i < count; i++) {
            if (off < 0 || off + HDR_MIN > block_bytes) {
                PyErr_SetString(PyExc_ValueError, "ring frame header outside its block");
                goto done;
            }
            const unsigned char *h = base + off;
            uint32_t nxt = u32_at(h), sec = u32_at(h + 4), nsec = u32_at(h + 8), snap = u32_at(h + 12);
            uint32_t st = u32_at(h + 20);
            uint16_t mac = u16_at(h + 24);
            if (off + (Py_ssize_t)mac + (Py_ssize_t)snap > block_bytes) {
                PyErr_SetString(PyExc_ValueError, "ring frame outside its block");
                goto done;
            }
            const unsigned char *data = h + mac;
            PyObject *frame;
            if ((st & TP_STATUS_VLAN_VALID) && ether && snap >= 12) { /* the tag the NIC took off */
                uint32_t tci = u32_at(h + 32);
                uint16_t tpid = u16_at(h + 36);
                if (!((st & TP_STATUS_VLAN_TPID_VALID) && tpid))
                    tpid = 0x8100;
                frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)snap + 4);
                if (frame == NULL)
                    goto done;
                unsigned char *out = (unsigned char *)PyBytes_AS_STRING(frame);
                memcpy(out, data, 12);
                out[12] = (unsigned char)(tpid >> 8);
                out[13] = (unsigned char)tpid;
                out[14] = (unsigned char)((tci >> 8) & 0xFF);
                out[15] = (unsigned char)tci;
                memcpy(out + 16, data + 12, (size_t)snap - 12);
            } else {
                frame = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)snap);
                if (frame == NULL)
                    goto done;
            }
            int bad = PyList_Append(frames, frame);
            Py_DECREF(frame);
            if (bad)
                goto done;
            PyObject *ts = PyFloat_FromDouble((double)sec + (double)nsec * 1e-9);
            if (ts == NULL)
                goto done;
            bad = PyList_Append(stamps, ts);
            Py_DECREF(ts);
            if (bad)
                goto done;
            total += snap;
            off += nxt;
        }
        n += count;
        __atomic_store_n(status_p, TP_STATUS_KERNEL, __ATOMIC_RELEASE); /* the block goes back */
        block = (block + 1) % blocks;
    }
    result = Py_BuildValue("nnn", block, n, total);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"read_blocks", read_blocks, METH_VARARGS,
     "read_blocks(ring, block, block_bytes, blocks, limit, frames, stamps, ether) -> (block, frames, bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ring", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC
PyInit__ring(void)
{
    return PyModule_Create(&module);
}
