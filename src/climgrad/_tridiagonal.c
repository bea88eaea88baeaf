/*
 * climgrad._tridiagonal: the Thomas sweeps of climgrad.tridiagonal in C, as a CPython extension.
 *
 * Built at install time from pyproject.toml (an optional setuptools extension: without a C
 * compiler the install still succeeds and climgrad.tridiagonal runs its eager PyTorch sweeps
 * instead). Plain C
 * and the CPython API only, no PyTorch or NumPy headers: the Python side checks devices, dtypes,
 * shapes and contiguity and passes raw data pointers (``Tensor.data_ptr()``) and the sizes
 * ``n`` (levels) and ``m`` (columns) of levels-first arrays of shape (n, m), row-major.
 *
 * Every function takes ``(n, m, pointer, ...)`` as Python ints and returns None; the GIL is released
 * during the sweep. No -ffast-math: the sweeps keep IEEE semantics, and so the rounding of the
 * eager torch code they replace.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

typedef ptrdiff_t idx;

#define BLOCK 64
#define MIN(x, y) ((x) < (y) ? (x) : (y))

/* Columns are processed in blocks of BLOCK so that one block's rows stay in L1 between levels. */
#define DEFINE(T, S)                                                                           \
static void factor_##S(idx n, idx m, const T *a, const T *b, const T *c, T *cp, T *inv) {      \
    for (idx j0 = 0; j0 < m; j0 += BLOCK) {                                                    \
        idx j1 = MIN(j0 + BLOCK, m);                                                           \
        for (idx j = j0; j < j1; ++j) { inv[j] = (T)1 / b[j]; cp[j] = c[j] * inv[j]; }         \
        for (idx k = 1; k < n; ++k) {                                                          \
            const idx o = k * m, p = (k - 1) * m;                                              \
            for (idx j = j0; j < j1; ++j) {                                                    \
                T r = (T)1 / (b[o + j] - a[o + j] * cp[p + j]);                                \
                inv[o + j] = r; cp[o + j] = c[o + j] * r;                                      \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
static void solve_##S(idx n, idx m, const T *a, const T *cp, const T *inv, const T *d, T *x) { \
    for (idx j0 = 0; j0 < m; j0 += BLOCK) {                                                    \
        idx j1 = MIN(j0 + BLOCK, m);                                                           \
        for (idx j = j0; j < j1; ++j) x[j] = d[j] * inv[j];                                    \
        for (idx k = 1; k < n; ++k) {                                                          \
            const idx o = k * m, p = (k - 1) * m;                                              \
            for (idx j = j0; j < j1; ++j)                                                      \
                x[o + j] = (d[o + j] - a[o + j] * x[p + j]) * inv[o + j];                      \
        }                                                                                      \
        for (idx k = n - 2; k >= 0; --k) {                                                     \
            const idx o = k * m, q = (k + 1) * m;                                              \
            for (idx j = j0; j < j1; ++j) x[o + j] = x[o + j] - cp[o + j] * x[q + j];          \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
static void solve_transposed_##S(idx n, idx m, const T *a, const T *cp, const T *inv,         \
                                 const T *g, T *z) {                                           \
    for (idx j0 = 0; j0 < m; j0 += BLOCK) {                                                    \
        idx j1 = MIN(j0 + BLOCK, m);                                                           \
        for (idx j = j0; j < j1; ++j) z[j] = g[j];                                             \
        for (idx k = 1; k < n; ++k) {                                                          \
            const idx o = k * m, p = (k - 1) * m;                                              \
            for (idx j = j0; j < j1; ++j) z[o + j] = g[o + j] - cp[p + j] * z[p + j];          \
        }                                                                                      \
        const idx l = (n - 1) * m;                                                             \
        for (idx j = j0; j < j1; ++j) z[l + j] = z[l + j] * inv[l + j];                        \
        for (idx k = n - 2; k >= 0; --k) {                                                     \
            const idx o = k * m, q = (k + 1) * m;                                              \
            for (idx j = j0; j < j1; ++j)                                                      \
                z[o + j] = (z[o + j] - a[q + j] * z[q + j]) * inv[o + j];                      \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
static void accumulate_##S(idx n, idx m, const T *lam, const T *x, const T *w, T *acc) {       \
    for (idx k = 0; k + 1 < n; ++k) {                                                          \
        const idx o = k * m, q = (k + 1) * m;                                                  \
        for (idx j = 0; j < m; ++j)                                                            \
            acc[o + j] += (x[q + j] - x[o + j]) * (lam[q + j] * w[q + j] - lam[o + j] * w[o + j]); \
    }                                                                                          \
}

DEFINE(double, f64)
DEFINE(float, f32)

/* ---------------------------------------------------------------------------------------------
 * Python wrappers: f(n, m, p0, ..., p{K-1}) with K pointers given as ints; returns None.
 * ------------------------------------------------------------------------------------------- */

static int parse(const char *name, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t pointers,
                 idx *n, idx *m, void **p) {
    if (nargs != pointers + 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (n, m and %zd pointers), got %zd",
                     name, pointers + 2, pointers, nargs);
        return -1;
    }
    Py_ssize_t levels = PyLong_AsSsize_t(args[0]);
    if (levels == -1 && PyErr_Occurred()) return -1;
    Py_ssize_t columns = PyLong_AsSsize_t(args[1]);
    if (columns == -1 && PyErr_Occurred()) return -1;
    if (levels < 0 || columns < 0) {
        PyErr_Format(PyExc_ValueError, "%s(): negative size", name);
        return -1;
    }
    for (Py_ssize_t i = 0; i < pointers; ++i) {
        p[i] = PyLong_AsVoidPtr(args[i + 2]);
        if (p[i] == NULL && PyErr_Occurred()) return -1;
        if (p[i] == NULL && levels * columns > 0) {
            PyErr_Format(PyExc_ValueError, "%s(): null data pointer", name);
            return -1;
        }
    }
    *n = (idx)levels;
    *m = (idx)columns;
    return 0;
}

#define WRAP(NAME, K, CALL)                                                                    \
static PyObject *py_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {          \
    idx n, m;                                                                                  \
    void *p[K];                                                                                \
    (void)self;                                                                                \
    if (parse(#NAME, args, nargs, K, &n, &m, p) < 0) return NULL;                              \
    Py_BEGIN_ALLOW_THREADS                                                                     \
    CALL;                                                                                      \
    Py_END_ALLOW_THREADS                                                                       \
    Py_RETURN_NONE;                                                                            \
}

#define WRAP_DTYPE(T, S)                                                                       \
WRAP(factor_##S, 5, factor_##S(n, m, p[0], p[1], p[2], p[3], p[4]))                            \
WRAP(solve_##S, 5, solve_##S(n, m, p[0], p[1], p[2], p[3], p[4]))                              \
WRAP(solve_transposed_##S, 5, solve_transposed_##S(n, m, p[0], p[1], p[2], p[3], p[4]))        \
WRAP(accumulate_##S, 4, accumulate_##S(n, m, p[0], p[1], p[2], p[3]))

WRAP_DTYPE(double, f64)
WRAP_DTYPE(float, f32)

#define ENTRY(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))py_##NAME, METH_FASTCALL, DOC}

static PyMethodDef methods[] = {
    ENTRY(factor_f64, "factor_f64(n, m, a, b, c, cp, inv): Thomas factors c' and 1/m (double)."),
    ENTRY(factor_f32, "factor_f32(n, m, a, b, c, cp, inv): Thomas factors c' and 1/m (float)."),
    ENTRY(solve_f64, "solve_f64(n, m, a, cp, inv, d, x): x = A^-1 d from the factors (double)."),
    ENTRY(solve_f32, "solve_f32(n, m, a, cp, inv, d, x): x = A^-1 d from the factors (float)."),
    ENTRY(solve_transposed_f64,
          "solve_transposed_f64(n, m, a, cp, inv, g, z): z = A^-T g (double; z may be g)."),
    ENTRY(solve_transposed_f32,
          "solve_transposed_f32(n, m, a, cp, inv, g, z): z = A^-T g (float; z may be g)."),
    ENTRY(accumulate_f64,
          "accumulate_f64(n, m, lam, x, w, acc): acc += dx * d(w lam), n - 1 rows (double)."),
    ENTRY(accumulate_f32,
          "accumulate_f32(n, m, lam, x, w, acc): acc += dx * d(w lam), n - 1 rows (float)."),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "climgrad._tridiagonal",
    "Compiled Thomas sweeps of climgrad.tridiagonal (levels-first arrays, raw data pointers).",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__tridiagonal(void) { return PyModule_Create(&module); }
