"""Typed, checked calls into the compiled kernels: one wrapper per C entry point.

C trusts its pointers: a float64 array where float32 is expected, a strided view, a tensor on a GPU or one row
short, and the kernel reads or writes the wrong memory. Each wrapper here takes named arguments, checks the
dtype, device (CPU), contiguity and shape of every array and the range of every number first, raising a
``TypeError`` or ``ValueError`` that names the argument, and then passes the pointers in the C function's order
in exactly one place. :func:`declare_counting` and :func:`declare_fused` give a freshly loaded library's
functions their ctypes signatures (``argtypes``, ``restype``), matching the C declarations in ``csrc/``.
"""
from __future__ import annotations

import ctypes
import functools
from typing import Sequence, Union

import numpy as np
import torch

Array = Union[torch.Tensor, np.ndarray]
# What ``argtypes`` lists: C scalars and pointers (the ctypes base classes documented as _SimpleCData, _Pointer).
ArgTypes = Sequence[Union[type[ctypes._SimpleCData], type[ctypes._Pointer]]]

_p, _i32, _i64, _f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double

# int ip_count_rows(const void *acts, int is_double, int mode, int64_t items, int64_t n, int64_t d,
#                   const int64_t *labels, int labels_per_item, int label_bits,
#                   int bins, double scale, double offset, const void *edges, const double *table,
#                   double *s_t, double *s_ty, int64_t *k_t, int64_t *k_ty, int64_t *bad, int threads)
COUNT_ROWS_ARGTYPES: ArgTypes = [_p, _i32, _i32, _i64, _i64, _i64,
                       _p, _i32, _i32,
                       _i32, _f64, _f64, _p, _p,
                       _p, _p, _p, _p, _p, _i32]

# int ip_fused_epoch(int S, int L, const int64_t *dims, const int32_t *act, const float *act_p,
#                    const int32_t *quantised, const float *quant, float *P, float *G, float *M, float *V,
#                    const float *X, const int64_t *Y, int64_t N, const int64_t *order, int64_t n, int64_t batch,
#                    int opt, const double *hyper, double *step, int update_params, int threads,
#                    double *stat_mean, double *stat_m2, double *stat_count,
#                    uint32_t *mt_states, int64_t *mt_counters, const int64_t *rows)
FUSED_EPOCH_ARGTYPES: ArgTypes = [_i32, _i32, _p, _p, _p,
                        _p, _p, _p, _p, _p, _p,
                        _p, _p, _i64, _p, _i64, _i64,
                        _i32, _p, ctypes.POINTER(ctypes.c_double), _i32, _i32,
                        _p, _p, _p,
                        _p, _p, _p]

# void ip_activate(int code, const float *p, const float *z, float *out, int64_t n)
# void ip_quantize(const float *q, const float *a, float *out, int64_t n)
ACTIVATE_ARGTYPES: ArgTypes = [_i32, _p, _p, _p, _i64]
QUANTIZE_ARGTYPES: ArgTypes = [_p, _p, _p, _i64]

# int ip_shuffle(int S, int64_t n, uint32_t *states, int64_t *counters, const int64_t *idx, int64_t *out,
#                int threads)
SHUFFLE_ARGTYPES: ArgTypes = [_i32, _i64, _p, _p, _p, _p, _i32]

_INT32_MAX = 2**31 - 1


def declare_counting(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the counting library's ``ip_count_rows`` its signature; returns ``lib``."""
    lib.ip_count_rows.argtypes = COUNT_ROWS_ARGTYPES
    lib.ip_count_rows.restype = ctypes.c_int
    return lib


def declare_fused(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the fused library's ``ip_fused_epoch``, ``ip_activate``, ``ip_quantize`` and ``ip_shuffle`` their
    signatures."""
    declare_shuffle(lib)
    lib.ip_fused_epoch.argtypes = FUSED_EPOCH_ARGTYPES
    lib.ip_fused_epoch.restype = ctypes.c_int
    lib.ip_activate.argtypes = ACTIVATE_ARGTYPES
    lib.ip_activate.restype = None
    lib.ip_quantize.argtypes = QUANTIZE_ARGTYPES
    lib.ip_quantize.restype = None
    return lib


def declare_shuffle(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the shuffling library's ``ip_shuffle`` its signature; returns ``lib``."""
    lib.ip_shuffle.argtypes = SHUFFLE_ARGTYPES
    lib.ip_shuffle.restype = ctypes.c_int
    return lib


_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32, "int64": torch.int64,
                 "uint32": torch.uint32}
_NUMPY_DTYPES = {name: np.dtype(name) for name in _TORCH_DTYPES}


@functools.lru_cache(maxsize=None)
def _allowed(dtypes: tuple[str, ...]) -> tuple[frozenset, frozenset]:
    return frozenset(_TORCH_DTYPES[d] for d in dtypes), frozenset(_NUMPY_DTYPES[d] for d in dtypes)


def _dtype_name(x: Array) -> str:
    return str(x.dtype).replace("torch.", "")


def _pointer(kernel: str, name: str, x: Array, dtypes: tuple[str, ...], shape: tuple[int | None, ...],
             writable: bool = False) -> int:
    """The address of array ``x`` after checking it; ``None`` in ``shape`` accepts any size on that axis."""
    # Called a dozen times per kernel call: the checks compare objects, and build their messages only on failure.
    if isinstance(x, torch.Tensor):
        if not x.is_cpu:
            raise ValueError(f"{kernel}: argument {name!r} is on {x.device}; the compiled kernels run on the CPU "
                             "(pass it .cpu())")
        dtype_ok = x.dtype in _allowed(dtypes)[0]
        contiguous = x.is_contiguous()
    elif isinstance(x, np.ndarray):
        if writable and not x.flags.writeable:
            raise ValueError(f"{kernel}: argument {name!r} is a read-only array; the kernel writes its results "
                             "into it")
        dtype_ok = x.dtype in _allowed(dtypes)[1]
        contiguous = x.flags.c_contiguous
    else:
        raise TypeError(f"{kernel}: argument {name!r} must be a torch.Tensor or numpy array, not {type(x).__name__}")
    if not dtype_ok:
        raise TypeError(f"{kernel}: argument {name!r} has dtype {_dtype_name(x)}, expected {' or '.join(dtypes)}")
    got = x.shape
    fits = len(got) == len(shape)
    if fits:
        for want, size in zip(shape, got):
            if want is not None and want != size:
                fits = False
    if not fits:
        wanted = "[" + ", ".join("any" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{kernel}: argument {name!r} has shape {list(got)}, expected {wanted}")
    if not contiguous:
        raise ValueError(f"{kernel}: argument {name!r} is not contiguous (C order); pass a contiguous copy")
    return x.data_ptr() if isinstance(x, torch.Tensor) else x.ctypes.data


def _integer(kernel: str, name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{kernel}: argument {name!r} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{kernel}: argument {name!r} is {value}, outside {low} .. {high}")
    return int(value)


def count_rows(lib: ctypes.CDLL, *, acts: torch.Tensor, mode: int, labels: torch.Tensor, label_bits: int,
               bins: int, scale: float, offset: float, edges: torch.Tensor, table: np.ndarray,
               s_t: np.ndarray, s_ty: np.ndarray, k_t: np.ndarray, k_ty: np.ndarray, bad: np.ndarray,
               threads: int) -> int:
    """Count the rows of every item with ``ip_count_rows`` (see ``csrc/count_rows.c``).

    Parameters
    ----------
    lib : ctypes.CDLL
        The counting library, declared by :func:`declare_counting`.
    acts : torch.Tensor
        [B, N, d] float32 or float64, contiguous, on the CPU: B items of N rows of d units.
    mode : int
        0: cells of the grid packed into one key per row; 1: rows of exact values; 2: cells of the grid, rows
        found by hashing (``bins`` at most 65536).
    labels : torch.Tensor
        [B, N] or [1, N] int64 (one label row shared by every item), each below ``2**label_bits``.
    label_bits : int
        Bits of the key that hold the label, 0 .. 62.
    bins : int
        Cells per unit of the grid (modes 0 and 2; not read in mode 1).
    scale, offset : float
        The grid's affine map of a value to its approximate cell index.
    edges : torch.Tensor
        [bins + 1] (modes 0 and 2) or [1] (mode 1), the dtype of ``acts``: the grid's edges and +inf.
    table : numpy.ndarray
        [N + 1] float64: c log2 c for c = 0 .. N.
    s_t, s_ty : numpy.ndarray
        [B] float64, written: the sums of c log2 c over the cells of T and of (T, Y).
    k_t, k_ty : numpy.ndarray
        [B] int64, written: the numbers of occupied cells.
    bad : numpy.ndarray
        [B] int64, written: 1 where the item holds a value that is not finite.
    threads : int
        Worker threads, 1 .. 64 (more are capped).

    Returns
    -------
    int
        0, or 1 when the kernel could not allocate its tables.
    """
    k = "count_rows"
    if not isinstance(acts, torch.Tensor) or acts.ndim != 3:
        raise ValueError(f"{k}: argument 'acts' must be a [B, N, d] tensor, got "
                         f"{list(acts.shape) if hasattr(acts, 'shape') else type(acts).__name__}")
    items, n, d = acts.shape
    mode = _integer(k, "mode", mode, 0, 2)
    label_bits = _integer(k, "label_bits", label_bits, 0, 62)
    bins = _integer(k, "bins", bins, 0 if mode == 1 else 1, 2**16 if mode == 2 else _INT32_MAX)
    threads = _integer(k, "threads", threads, 1, _INT32_MAX)
    if n > 2**30:
        raise ValueError(f"{k}: {n} rows per item; the kernel's tables index at most 2**30")
    a = _pointer(k, "acts", acts, ("float32", "float64"), (items, n, d))
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or labels.shape[0] not in (1, items):
        raise ValueError(f"{k}: argument 'labels' must be a [{items} or 1, {n}] int64 tensor, got "
                         f"{list(labels.shape) if hasattr(labels, 'shape') else type(labels).__name__}")
    y = _pointer(k, "labels", labels, ("int64",), (labels.shape[0], n))
    # The labels go into the keys' low bits and index per-label counters: one out of range would write elsewhere.
    low, high = torch.aminmax(labels) if labels.numel() else (0, 0)
    if int(low) < 0 or int(high) >= 1 << label_bits:
        raise ValueError(f"{k}: argument 'labels' holds values outside 0 .. {(1 << label_bits) - 1} "
                         f"(label_bits={label_bits})")
    e = _pointer(k, "edges", edges, ("float64" if acts.dtype == torch.float64 else "float32",),
                 (1 if mode == 1 else bins + 1,))
    t = _pointer(k, "table", table, ("float64",), (n + 1,))
    out = [_pointer(k, name, v, (dtype,), (items,), writable=True)
           for name, v, dtype in (("s_t", s_t, "float64"), ("s_ty", s_ty, "float64"), ("k_t", k_t, "int64"),
                                  ("k_ty", k_ty, "int64"), ("bad", bad, "int64"))]
    return lib.ip_count_rows(a, int(acts.dtype == torch.float64), mode, items, n, d,
                             y, int(labels.shape[0] > 1), label_bits,
                             bins, float(scale), float(offset), e, t,
                             *out, threads)


def params_per_seed(dims: list[int]) -> int:
    """Parameters of one MLP of widths ``dims``: a weight [out, in] and a bias [out] per Linear layer."""
    return sum(o * i + o for i, o in zip(dims[:-1], dims[1:]))


class FusedEpoch:
    """The checked arguments of ``ip_fused_epoch`` (see ``csrc/fused_epoch.c``) that stay fixed over a fit; calling
    it trains every seed for one epoch with a new order of rows.

    Every array fixed here is checked once (dtype, device, contiguity, shape, and the ranges of the numbers) and
    held, so that it outlives the calls; each call checks that each one still has the storage and shape it was
    checked with (a ``resize_`` or ``set_`` in between raises), and checks in full what changes: ``order`` and the
    gradient statistics' arrays. The kernel itself refuses rows of ``order`` outside the rows of ``inputs``
    (before reading them) and labels outside the classes.

    Parameters
    ----------
    lib : ctypes.CDLL
        The fused library, declared by :func:`declare_fused`.
    dims : torch.Tensor
        [L + 1] int64: the widths, inputs first, classes last (1 <= L <= 64 Linear layers).
    acts, quantised : torch.Tensor
        [max(L - 1, 1)] int32: per hidden layer, the activation's code and whether it is fake-quantised.
    act_params : torch.Tensor
        [2 max(L - 1, 1)] float32: per hidden layer, the activation's two parameters.
    quant : torch.Tensor
        [3 max(L - 1, 1)] float32: per hidden layer, the quantiser's low, high and step.
    params, grads, exp_avg, exp_avg_sq : torch.Tensor
        [S, T] float32 (T parameters per seed, layer by layer: weight [out, in], then bias [out]): parameters
        and Adam's moments, updated in place; the gradients, written.
    inputs : torch.Tensor
        [N, dims[0]] float32.
    labels : torch.Tensor
        [N] int64 class indices (the kernel returns -1 for one outside 0 .. dims[L] - 1).
    batch : int
        Minibatch size, >= 1.
    optimizer : int
        0: Adam (``hyper`` = lr, beta1, beta2, eps, weight_decay), 1: SGD (``hyper`` = lr, weight_decay).
    hyper : torch.Tensor
        [5] or [2] float64, as ``optimizer`` says (read at every call: it may be changed in place).
    threads : int
        Worker threads, >= 1 (capped at the number of seeds and 64).
    """

    kernel = "fused_epoch"

    def __init__(self, lib: ctypes.CDLL, *, dims: torch.Tensor, acts: torch.Tensor, act_params: torch.Tensor,
                 quantised: torch.Tensor, quant: torch.Tensor, params: torch.Tensor, grads: torch.Tensor,
                 exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                 batch: int, optimizer: int, hyper: torch.Tensor, threads: int) -> None:
        k = self.kernel
        _pointer(k, "dims", dims, ("int64",), (None,))
        widths = [int(v) for v in dims.tolist()]
        L = len(widths) - 1
        if not 1 <= L <= 64 or min(widths) < 1:
            raise ValueError(f"{k}: argument 'dims' must hold 2 .. 65 positive widths, got {widths}")
        hidden = max(L - 1, 1)
        T = params_per_seed(widths)
        self.optimizer = _integer(k, "optimizer", optimizer, 0, 1)
        self.batch = _integer(k, "batch", batch, 1, 2**62)
        self.threads = _integer(k, "threads", threads, 1, _INT32_MAX)
        arrays = {
            "dims": (dims, ("int64",), (L + 1,)),
            "acts": (acts, ("int32",), (hidden,)),
            "act_params": (act_params, ("float32",), (2 * hidden,)),
            "quantised": (quantised, ("int32",), (hidden,)),
            "quant": (quant, ("float32",), (3 * hidden,)),
            "params": (params, ("float32",), (None, T)),
        }
        S = params.shape[0] if isinstance(params, torch.Tensor) and params.ndim == 2 else 0
        for name, v in (("grads", grads), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
            arrays[name] = (v, ("float32",), (S, T))
        arrays["inputs"] = (inputs, ("float32",), (None, widths[0]))
        N = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.ndim == 2 else 0
        arrays["labels"] = (labels, ("int64",), (N,))
        arrays["hyper"] = (hyper, ("float64",), (5 if self.optimizer == 0 else 2,))
        ptr = {}
        for name, (v, dtypes, shape) in arrays.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{k}: argument {name!r} must be a torch.Tensor, not {type(v).__name__}")
            ptr[name] = _pointer(k, name, v, dtypes, shape)
        if S < 1:
            raise ValueError(f"{k}: argument 'params' holds no seed (shape {list(params.shape)})")
        self.lib, self.S, self.L, self.N, self.T = lib, S, L, N, T
        self.weights = sum(o * i for i, o in zip(widths[:-1], widths[1:]))
        # What each call re-verifies: the same tensors, at the same addresses, with the same shapes.
        self._held = tuple((name, v, ptr[name], tuple(v.shape)) for name, (v, _, _) in arrays.items())
        self._args = (S, L, ptr["dims"], ptr["acts"], ptr["act_params"], ptr["quantised"], ptr["quant"],
                      ptr["params"], ptr["grads"], ptr["exp_avg"], ptr["exp_avg_sq"], ptr["inputs"], ptr["labels"],
                      N)
        self._hyper = ptr["hyper"]
        self._stats: tuple | None = None

    def _still_valid(self) -> None:
        for name, v, address, shape in self._held:
            if v.data_ptr() != address or v.shape != shape:
                raise ValueError(f"{self.kernel}: argument {name!r} was resized or moved since it was checked "
                                 f"(now shape {list(v.shape)}); prepare a new FusedEpoch")

    def __call__(self, order: torch.Tensor, step: ctypes.c_double, update: bool = True,
                 stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 draw: tuple[np.ndarray, np.ndarray, torch.Tensor] | None = None) -> int:
        """Train one epoch (or, ``update=False``, compute the first minibatch's gradients only).

        Parameters
        ----------
        order : torch.Tensor
            [S, n] int64: each seed's rows of ``inputs`` in training order; written first where ``draw`` is given.
        step : ctypes.c_double
            The optimiser's step count, advanced by the number of minibatches.
        update : bool, default True
            False computes the first minibatch's gradients only.
        stats : tuple of three torch.Tensor, optional
            Gradient statistics: (mean [S, W], m2 [S, W], count [S]) float64, W = :attr:`weights` per seed; every
            minibatch's weight gradients are added to these running moments (Welford; see the C source).
        draw : tuple, optional
            (states [S, 624] uint32, counters [S, 2] int64, rows [S, n] int64), as :func:`shuffle` takes them:
            each seed's order is drawn into ``order`` inside the kernel, by the thread that trains it, before
            training (``update`` must be True); the states and counters advance.

        Returns
        -------
        int
            0, -1 for a label out of range, -2 for unsupported sizes, -3 when memory runs out, -4 for a row of
            ``order`` outside 0 .. N - 1.
        """
        k = self.kernel
        self._still_valid()
        if not isinstance(step, ctypes.c_double):
            raise TypeError(f"{k}: argument 'step' must be a ctypes.c_double, not {type(step).__name__}")
        if not isinstance(order, torch.Tensor):
            raise TypeError(f"{k}: argument 'order' must be a torch.Tensor, not {type(order).__name__}")
        o = _pointer(k, "order", order, ("int64",), (self.S, None), writable=draw is not None)
        mt: tuple[int, int, int] | tuple[None, None, None] = (None, None, None)
        if draw is not None:
            if not update:
                raise ValueError(f"{k}: orders are drawn for training epochs only (update=True)")
            states, counters, rows = draw
            mt = (_pointer(k, "draw states", states, ("uint32",), (self.S, 624), writable=True),
                  _pointer(k, "draw counters", counters, ("int64",), (self.S, 2), writable=True),
                  _pointer(k, "draw rows", rows, ("int64",), tuple(order.shape)))
        moments: tuple[int, int, int] | tuple[None, None, None] = (None, None, None)
        if stats is not None:
            held = self._stats
            # The same (immutable) tuple as the previous call, its arrays unmoved: checked already.
            if held is not None and held[0] is stats and all(t.data_ptr() == a for t, a in zip(stats, held[1])) \
                    and all(t.shape == shape for t, shape in zip(stats, held[2])):
                moments = held[1]
            else:
                mean, m2, count = stats
                moments = (_pointer(k, "stats mean", mean, ("float64",), (self.S, self.weights), writable=True),
                           _pointer(k, "stats m2", m2, ("float64",), (self.S, self.weights), writable=True),
                           _pointer(k, "stats count", count, ("float64",), (self.S,), writable=True))
                self._stats = (stats, moments, tuple(t.shape for t in stats))
        return self.lib.ip_fused_epoch(*self._args, o, order.shape[1], self.batch, self.optimizer,
                                       self._hyper, ctypes.byref(step), int(bool(update)), self.threads,
                                       *moments, *mt)


def fused_epoch(lib: ctypes.CDLL, *, dims: torch.Tensor, acts: torch.Tensor, act_params: torch.Tensor,
                quantised: torch.Tensor, quant: torch.Tensor, params: torch.Tensor, grads: torch.Tensor,
                exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                order: torch.Tensor, batch: int, optimizer: int, hyper: torch.Tensor, step: ctypes.c_double,
                update: bool, threads: int) -> int:
    """One call of ``ip_fused_epoch`` with every argument checked: :class:`FusedEpoch` prepared and called once.

    Parameters are those of :class:`FusedEpoch` and its call; ``order``'s rows are also checked here against the
    rows of ``inputs`` before the kernel runs. Returns the kernel's status (see :meth:`FusedEpoch.__call__`).
    """
    prepared = FusedEpoch(lib, dims=dims, acts=acts, act_params=act_params, quantised=quantised, quant=quant,
                          params=params, grads=grads, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, inputs=inputs,
                          labels=labels, batch=batch, optimizer=optimizer, hyper=hyper, threads=threads)
    if not isinstance(step, ctypes.c_double):
        raise TypeError(f"fused_epoch: argument 'step' must be a ctypes.c_double, not {type(step).__name__}")
    if isinstance(order, torch.Tensor) and order.dtype == torch.int64 and order.numel():
        low, high = torch.aminmax(order)
        if int(low) < 0 or int(high) >= prepared.N:
            raise ValueError(f"fused_epoch: argument 'order' holds rows outside 0 .. {prepared.N - 1} (the rows of "
                             "'inputs')")
    return prepared(order, step, update)


def shuffle(lib: ctypes.CDLL, *, states: np.ndarray, counters: np.ndarray, idx: torch.Tensor, out: torch.Tensor,
            threads: int) -> int:
    """Draw every seed's order of its rows with ``ip_shuffle`` (see ``csrc/shuffle.c``).

    Parameters
    ----------
    states : numpy.ndarray
        [S, 624] uint32: each seed's Mersenne-twister state words; advanced in place.
    counters : numpy.ndarray
        [S, 2] int64: each seed's (left, next) counters as torch keeps them; advanced in place.
    idx : torch.Tensor
        [S, n] int64: each seed's rows.
    out : torch.Tensor
        [S, n] int64, written: ``idx[s]`` in the order ``torch.randperm(n)`` draws from seed s's generator.
    threads : int
        Worker threads sharing the seeds (1 or more).

    Returns
    -------
    int
        0, or -2 for unsupported sizes or counters no generator has (see the C source).
    """
    k = "shuffle"
    st = _pointer(k, "states", states, ("uint32",), (None, 624), writable=True)
    S = _integer(k, "seeds", states.shape[0], 0, _INT32_MAX)
    ct = _pointer(k, "counters", counters, ("int64",), (S, 2), writable=True)
    src = _pointer(k, "idx", idx, ("int64",), (S, None))
    n = idx.shape[1]
    dst = _pointer(k, "out", out, ("int64",), (S, n))
    return lib.ip_shuffle(S, n, st, ct, src, dst, _integer(k, "threads", threads, 1, 1024))
