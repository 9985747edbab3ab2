"""The BLAS GEMM and GEMV NumPy itself calls, reached through ctypes: `c = alpha * a @ b + beta
* c` in one call, so an update `w - lr * x.T @ g` (or a bias's `b - sum(g, 0)`, a GEMV with a
ones vector) makes no product-sized temporary and no second pass.

Only the library NumPy has already loaded is used (its symbols are looked up through NumPy's
own extension module, so nothing new is loaded); without one, `GEMM` is empty, the lowering
keeps matmul + subtract, and the kernel computes the same with NumPy.
"""
from __future__ import annotations

import ctypes

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112        # CBLAS enums

# (symbol pattern, integer width): NumPy's own wheels ship scipy-openblas with ILP64 symbols
NAMES = (("scipy_cblas_{}64_", ctypes.c_int64), ("cblas_{}64_", ctypes.c_int64),
         ("cblas_{}", None))      # None: 32 bits unless NumPy's BLAS is ILP64


def find_gemm(kind: str = "gemm") -> dict:
    """dtype char ('f', 'd') -> (NumPy's BLAS sgemm/dgemm, or sgemv/dgemv for kind "gemv", as
    a ctypes function, its integer type, its real type); {} when none is found or a small
    product gives a wrong result.
    The function has no argtypes: callers pass ctypes objects, made once (the conversion of
    14 Python arguments per call costs more than a small product)."""
    lib = numpy_library()
    if lib is None:
        return {}
    found = {}
    for char, real in (("f", ctypes.c_float), ("d", ctypes.c_double)):
        for pattern, width in NAMES:
            try:
                f = lib[pattern.format(("s" if char == "f" else "d") + kind)]
            except AttributeError:
                continue
            f.restype = None
            routine = (f, width or (ctypes.c_int64 if ilp64() else ctypes.c_int32), real)
            if works(routine, char, kind):
                found[char] = routine
            break
    return found


def numpy_library():
    """NumPy's own extension module as a ctypes library (None when it cannot be opened): it
    is already loaded, so dlsym through it sees its dependencies, the BLAS among them."""
    try:
        try:
            from numpy._core import _multiarray_umath as umath
        except ImportError:                     # NumPy 1.x
            from numpy.core import _multiarray_umath as umath
        return ctypes.CDLL(umath.__file__)
    except (ImportError, OSError, AttributeError):
        return None


def ilp64() -> bool:
    """Whether NumPy's BLAS takes 64-bit integers (its build configuration says so)."""
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
    except (AttributeError, KeyError, TypeError):
        return False
    text = " ".join(str(v) for v in blas.values()).lower()
    return "ilp64" in text or "64bitint" in text


def works(routine, char: str, kind: str = "gemm") -> bool:
    """One small product with both operands transposed (a transposed matrix times a vector
    for a GEMV), checked against NumPy."""
    a = np.arange(1.0, 7.0, dtype=char).reshape(3, 2)     # used as a.T: 2x3
    b = np.arange(1.0, 13.0, dtype=char).reshape(4, 3)    # used as b.T: 3x4
    f, i, real = routine
    p = ctypes.c_void_p
    if kind == "gemv":
        x, y = np.arange(1.0, 4.0, dtype=char), np.ones(2, char)
        f(ctypes.c_int(ROW_MAJOR), ctypes.c_int(TRANS), i(3), i(2), real(-2.0),
          p(a.ctypes.data), i(2), p(x.ctypes.data), i(1), real(1.0), p(y.ctypes.data), i(1))
        return bool(np.array_equal(y, 1.0 - 2.0 * (a.T @ x)))
    c = np.ones((2, 4), char)
    f(ctypes.c_int(ROW_MAJOR), ctypes.c_int(TRANS), ctypes.c_int(TRANS), i(2), i(4), i(3),
      real(-2.0), p(a.ctypes.data), i(2), p(b.ctypes.data), i(3), real(1.0), p(c.ctypes.data),
      i(4))
    return bool(np.array_equal(c, 1.0 - 2.0 * (a.T @ b.T)))



class Prepared(dict):
    """One GEMM or GEMV step's prepared call: the arrays it last saw and the ctypes arguments
    made for them (a new feed or output of the same layout only changes one address). It
    belongs to one call site: its transposes, alpha and beta never change. An exported
    module starts with none."""


def gemm(c, a, b, ta, tb, alpha, beta, prep):
    """c = alpha * op(a) @ op(b) + beta * c over c, op(x) = x.T when its flag is set. One BLAS
    call when c is C-contiguous and op(a), op(b) are C-contiguous or
    transposed views of such, all of one float dtype; otherwise NumPy: a product, then c."""
    seen = prep.get("seen")
    if seen is None or not (seen[0] is c or renew(seen, 0, c)) \
            or not (seen[1] is a or renew(seen, 1, a)) or not (seen[2] is b or renew(seen, 2, b)):
        seen = prep["seen"] = prepare(c, a, b, ta, tb, alpha, beta)
    if seen[3] is None:
        return combine(c, np.matmul(a.T if ta else a, b.T if tb else b), alpha, beta)
    seen[3](*seen[4])
    return c


def gemv(c, a, x, ta, alpha, beta, prep):
    """c = alpha * op(a) @ x + beta * c over c (an array of op(a)'s rows, any shape), x a
    vector, op(a) = a.T when ta: a sum of a over one axis is op(a) @ ones. One BLAS call when
    a is C-contiguous or a transposed such, x and c contiguous, all of one float dtype;
    otherwise NumPy."""
    seen = prep.get("seen")
    if seen is None or not (seen[0] is c or renew(seen, 0, c)) \
            or not (seen[1] is a or renew(seen, 1, a)) or seen[2] is not x:
        seen = prep["seen"] = prepare_gemv(c, a, x, ta, alpha, beta)
    if seen[3] is None:
        t = np.matmul(a.T if ta else a, x)
        return combine(c, t.reshape(c.shape) if t.shape != c.shape else t, alpha, beta)
    seen[3](*seen[4])
    return c


def combine(c, t, alpha, beta):
    """c = alpha * t + beta * c over c, NumPy's way (no BLAS, or operands it cannot take)."""
    if alpha != 1:
        np.multiply(t, alpha, out=t)
    if beta == -1:
        np.subtract(t, c, out=c)
    else:
        if beta != 1:
            np.multiply(c, beta, out=c)
        np.add(c, t, out=c)
    return c


def prepare(c, a, b, ta, tb, alpha, beta) -> list:
    """[c, a, b, the BLAS function, its arguments as ctypes objects, the argument positions
    of c's, a's and b's addresses] for c = alpha op(a) op(b) + beta c; the function None when
    these arrays need NumPy. An F-ordered c (stored transposed, runtime/layout.py) is
    c.T = op(b).T @ op(a).T over the C-ordered c.T: the same call, a and b swapped."""
    if c.ndim == 2 and not c.flags.c_contiguous and c.flags.f_contiguous:
        seen = prepare(c.T, b, a, not tb, not ta, alpha, beta)
        seen[:3] = [c, a, b]
        if seen[3] is not None:
            seen[5] = (12, 9, 7)
        return seen
    routine = GEMM.get(c.dtype.char)
    la, lb = layout(a, ta), layout(b, tb)
    if routine is None or not alpha or not beta or not (a.dtype == c.dtype == b.dtype) \
            or la is None \
            or lb is None or not c.flags.c_contiguous or not c.flags.writeable or not c.size \
            or not a.size:
        return [c, a, b, None, None]
    f, i, real = routine
    (m, n), k = c.shape, a.shape[0 if ta else 1]
    p = ctypes.c_void_p
    args = [ctypes.c_int(ROW_MAJOR), ctypes.c_int(la[0]), ctypes.c_int(lb[0]), i(m), i(n),
            i(k), real(alpha), p(address(a)), i(la[1]), p(address(b)), i(lb[1]), real(beta),
            p(address(c)), i(n)]
    return [c, a, b, f, args, (12, 7, 9)]


def prepare_gemv(c, a, x, ta, alpha, beta) -> list:
    """As `prepare`, for c = alpha op(a) @ x + beta c: cblas ?gemv over a's rows as stored
    (a transposed C-contiguous array is a C-contiguous one with the other flag)."""
    routine = GEMV.get(c.dtype.char)
    la = layout(a, ta) if a.ndim == 2 else None
    if routine is None or la is None or not alpha or not beta \
            or not (a.dtype == c.dtype == x.dtype) or not a.size or not c.size \
            or x.ndim != 1 or not x.flags.c_contiguous or not c.flags.c_contiguous \
            or not c.flags.writeable or c.size != a.shape[1 if ta else 0] \
            or x.size != a.shape[0 if ta else 1]:
        return [c, a, x, None, None]
    f, i, real = routine
    p = ctypes.c_void_p
    args = [ctypes.c_int(ROW_MAJOR), ctypes.c_int(la[0]), i(a.size // la[1]), i(la[1]),
            real(alpha), p(address(a)), i(la[1]), p(address(x)), i(1), real(beta),
            p(address(c)), i(1)]
    return [c, a, x, f, args, (10, 5, 7)]


def layout(x, t: bool) -> tuple | None:
    """(CBLAS trans flag, leading dimension) of op(x) = x.T if t else x, or None when op(x)
    is neither C-contiguous nor a transposed C-contiguous array."""
    flags = x.flags
    if flags.c_contiguous:
        return (TRANS, x.shape[1]) if t else (NO_TRANS, x.shape[1])
    if flags.f_contiguous:
        return (NO_TRANS, x.shape[0]) if t else (TRANS, x.shape[0])
    return None


def renew(seen: list, k: int, x) -> bool:
    """A new array x as operand k (0: c, 1: a, 2: b) of a prepared call: True when only its
    address changes (the shape, strides and dtype of the array it replaces, c writeable),
    which is then written into the arguments (a fresh output array every call, a feed)."""
    old = seen[k]
    if seen[3] is None or x.shape != old.shape or x.strides != old.strides \
            or x.dtype != old.dtype or not k and not x.flags.writeable:
        return False
    seen[4][seen[5][k]].value = address(x)
    seen[k] = x
    return True


def address(x) -> int:
    """The address of x's first element (c_char.from_buffer is several times faster than
    x.ctypes.data, but refuses read-only and non-C-contiguous arrays)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(x))
    except (TypeError, ValueError, BufferError):
        return x.ctypes.data


def pays(m: int, n: int, k: int, fixed: bool) -> bool:
    """Whether one GEMM call beats matmul + add for c (m, n) += a (m, k) @ b (k, n)
    (`OPENBLAS_NUM_THREADS=1 python bench/gemm_rule.py`, a loaded host: ratios only). Not for
    a vector (m or n 1: NumPy's matrix-vector product is 1.7-2.4x faster than sgemm at k =
    512). With the same arrays every call (`fixed`: plan buffers, variables, constants)
    always: 0.57-0.92 of the time from 8x8x32 to 784x128x512. With an operand new every call
    (a feed) its address is found again (~2-4 us): from MIN_WORK multiply-adds (1.11-1.35 up
    to 64x10x512, 0.81-0.97 from 784x128x32 on, 128x64x512 a tie)."""
    return m > 1 and n > 1 and (fixed or m * n * k >= MIN_WORK)


MIN_WORK = 2 ** 21


def pays_vector(m: int, n: int, fixed: bool) -> bool:
    """Whether one GEMV call beats NumPy's product with a ones vector and the add for c (n,)
    += sum(a, axis) over a's m rows (`OPENBLAS_NUM_THREADS=1 python bench/gemm_rule.py
    --vectors`, load ~6: ratios only): with the same arrays every call (the same BLAS routine
    without the add's call and pass: 0.60-0.76 of the time from 32x10 to 512x1024, 0.98 at
    4096x256; in a step, bench/gemm_ab.py --off vector,mean: MLP b32 0.983-0.986); not with
    a feed (its address found again: 1.05-1.52), nor for one sum (n = 1, a dot product:
    logreg's bias update was 1.012-1.018 in a step)."""
    return m > 1 and n > 1 and fixed


# OpenBLAS's thread count, by the names NumPy's wheels and other builds give it
THREAD_NAMES = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                "openblas_get_num_threads")


def find_threads():
    """NumPy's OpenBLAS `get_num_threads` as a ctypes function (looked up as find_gemm looks
    up the GEMM), or None (another BLAS, or none found)."""
    lib = numpy_library()
    if lib is None:
        return None
    for name in THREAD_NAMES:
        try:
            f = lib[name]
        except AttributeError:
            continue
        f.restype, f.argtypes = ctypes.c_int, []
        return f
    return None


def threads() -> int:
    """How many threads NumPy's BLAS runs a large product on now (it can change while the
    process runs, e.g. by threadpoolctl: asked at every call). 1 when unknown: the choices
    made from it (winograd.pays) then stay those measured at one thread."""
    if GET_THREADS is None:
        return 1
    try:
        return max(1, int(GET_THREADS()))
    except (OSError, ValueError):
        return 1


# found once per process (an exported module finds them again where it runs)
GEMM = find_gemm()
GEMV = find_gemm("gemv")
GET_THREADS = find_threads()
