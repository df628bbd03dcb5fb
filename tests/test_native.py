"""The C kernels' build: sources as package data that compile without warnings, a private cache keyed by everything
that changes the library, the OpenMP decision, and typed wrappers that refuse bad arrays before C sees them."""
import ctypes
import os
import re
import subprocess

import numpy as np
import pytest
import torch

from infoplane._native import build as _native
from infoplane._native import kernels
from infoplane.estimators import binned_mi
from infoplane.estimators._cpu import count_kernel
from infoplane.train import fit, fused, fused_kernel, shuffle

SOURCES = ("count_rows.c", "fused_epoch.c", "shuffle.c")
TINY = "int ip_one(void) { return 1; }\n"
needs_compiler = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty XDG cache of this test's own; the kernels' per-process handles reset (restored afterwards)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(_native.NO_NATIVE_ENV, raising=False)
    monkeypatch.setattr(count_kernel, "_LOADED", None)
    monkeypatch.setattr(fused_kernel, "_LOADED", None)
    monkeypatch.setattr(fused, "_ANNOUNCED", set())
    return tmp_path / "infoplane"


def counting_inputs():
    rng = np.random.default_rng(3)
    return np.tanh(rng.normal(size=(2, 300, 3))).astype(np.float32), rng.integers(0, 3, size=300)


@pytest.fixture(scope="module")
def reference():
    """binned_mi of counting_inputs() through the kernel of this process (set up before any test's own cache)."""
    return binned_mi(*counting_inputs(), bins=30, range=(-1, 1))


def tiny_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def fit_tiny(**kw):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
    return fit(tiny_mlp, x, y, torch.stack([torch.randperm(40, generator=g) for _ in range(2)]), seeds=2, epochs=1,
               batch_size=8, **kw)


# -- the sources -------------------------------------------------------------------------------------------------

def test_the_sources_are_package_data_read_by_the_kernels():
    assert count_kernel.SOURCE == _native.source("count_rows.c")
    # the fused library draws the epoch's orders with shuffle.c's code, compiled in front of its own
    assert fused_kernel.SOURCE == _native.source("shuffle.c") + "\n" + _native.source("fused_epoch.c")
    assert shuffle.SOURCE == _native.source("shuffle.c")
    assert "int ip_count_rows(" in count_kernel.SOURCE and "int ip_fused_epoch(" in fused_kernel.SOURCE


@needs_compiler
@pytest.mark.parametrize("openmp", [(), ("-fopenmp",)], ids=["pthreads", "openmp"])
@pytest.mark.parametrize("name", SOURCES)
def test_the_sources_compile_without_warnings(tmp_path, name, openmp):
    project = count_kernel.FLAGS if name == "count_rows.c" else _native.FLAGS
    flags = (*project, *openmp, "-Wall", "-Wextra", "-Werror")
    src = tmp_path / name
    src.write_text({"count_rows.c": count_kernel.SOURCE, "fused_epoch.c": fused_kernel.SOURCE,
                    "shuffle.c": shuffle.SOURCE}[name])
    proc = subprocess.run([_native.compiler(), *flags, str(src), "-o", str(tmp_path / "k.so"), "-lm"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} with {' '.join(flags)}:\n{proc.stderr}"


_C_TYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "double": ctypes.c_double}


def c_parameters(source, function):
    """The ctypes type each parameter of ``function`` in the C source needs (c_void_p for any pointer)."""
    params = re.search(rf"\b{function}\(([^)]*)\)\s*{{", source).group(1)
    out = []
    for p in params.split(","):
        words = p.replace("*", " * ").split()
        out.append(ctypes.c_void_p if "*" in words else _C_TYPES[words[-2]])
    return out


@pytest.mark.parametrize("name, function, argtypes", [
    ("count_rows.c", "ip_count_rows", kernels.COUNT_ROWS_ARGTYPES),
    ("fused_epoch.c", "ip_fused_epoch", kernels.FUSED_EPOCH_ARGTYPES),
    ("fused_epoch.c", "ip_activate", kernels.ACTIVATE_ARGTYPES),
    ("fused_epoch.c", "ip_quantize", kernels.QUANTIZE_ARGTYPES),
    ("shuffle.c", "ip_shuffle", kernels.SHUFFLE_ARGTYPES),
])
def test_the_declared_argtypes_match_the_c_signatures(name, function, argtypes):
    wanted = c_parameters(_native.source(name), function)
    got = [ctypes.c_void_p if t is not ctypes.c_void_p and hasattr(t, "contents") else t for t in argtypes]
    assert got == wanted


# -- the cache ---------------------------------------------------------------------------------------------------

@needs_compiler
def test_the_cache_is_created_private_and_holds_a_private_library(cache):
    lib = _native.build("tiny", TINY, _native.compiler())
    assert not isinstance(lib, str), lib
    assert lib.ip_one() == 1
    assert (cache.stat().st_mode & 0o777) == 0o700
    (library,) = cache.iterdir()
    assert library.stat().st_mode & 0o077 == 0  # nothing for the group or others, whatever the umask
    assert _native.private_problem(library, directory=False) is None


@pytest.mark.parametrize("mode", [0o770, 0o703, 0o777])
def test_a_cache_writable_by_others_is_refused_and_the_fallbacks_give_the_same_numbers(reference, cache, mode):
    a, y = counting_inputs()
    cache.mkdir(mode=0o700)
    cache.chmod(mode)
    reason = _native.build("tiny", TINY, _native.compiler() or "cc")
    assert isinstance(reason, str) and "not private" in reason and "writable by its group or others" in reason
    assert list(cache.iterdir()) == []  # nothing was compiled
    with pytest.warns(count_kernel.KernelFallbackWarning, match="not private.*chmod go-w"):
        after = binned_mi(a, y, bins=30, range=(-1, 1))
    assert torch.equal(reference.ixt, after.ixt) and torch.equal(reference.ity, after.ity)
    with pytest.warns(fused.FusedFallbackWarning, match="not private"):
        assert "fused" not in fit_tiny().reason


@needs_compiler
def test_a_library_or_cache_owned_by_another_user_is_refused(cache):
    lib = _native.build("tiny", TINY, _native.compiler())
    assert not isinstance(lib, str), lib
    (library,) = cache.iterdir()
    try:
        os.chown(library, 65534, 65534)
    except PermissionError:
        pytest.skip("changing a file's owner needs root")
    reason = _native.build("tiny", TINY, _native.compiler())
    assert isinstance(reason, str) and reason.startswith("refusing the cached tiny kernel")
    assert "owned by uid 65534" in reason
    os.chown(library, os.getuid(), os.getgid())
    assert not isinstance(_native.build("tiny", TINY, _native.compiler()), str)
    os.chown(cache, 65534, 65534)
    reason = _native.build("tiny", TINY, _native.compiler())
    assert isinstance(reason, str) and "not private" in reason and "owned by uid 65534" in reason


@needs_compiler
def test_a_library_writable_by_others_or_a_link_is_refused(cache, tmp_path):
    assert not isinstance(_native.build("tiny", TINY, _native.compiler()), str)
    (library,) = cache.iterdir()
    library.chmod(0o722)
    reason = _native.build("tiny", TINY, _native.compiler())
    assert isinstance(reason, str) and "writable by its group or others (mode 0722)" in reason
    library.chmod(0o700)
    elsewhere = tmp_path / "elsewhere.so"
    library.rename(elsewhere)
    library.symlink_to(elsewhere)
    reason = _native.build("tiny", TINY, _native.compiler())
    assert isinstance(reason, str) and "not a regular file" in reason


@needs_compiler
def test_the_cache_key_holds_the_compiler_version_and_the_extra_flags(cache, monkeypatch):
    def library(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        lib = _native.build("tiny", TINY, _native.compiler())
        assert not isinstance(lib, str), lib
        return os.path.basename(lib._name)

    monkeypatch.setattr(_native, "compiler_version", lambda cc: "cc 1.0")
    first = library()
    assert library() == first  # cached
    monkeypatch.setattr(_native, "compiler_version", lambda cc: "cc 2.0")
    second = library()
    extra = library(INFOPLANE_NATIVE_FLAGS_EXTRA="-DIP_UNUSED=1")
    assert len({first, second, extra}) == 3
    assert len(list(cache.iterdir())) == 3


@needs_compiler
def test_the_compiler_version_is_the_first_line_of_its_version_output():
    version = _native.compiler_version(_native.compiler())
    assert version and "\n" not in version and version != "unknown"


def test_infoplane_no_native_switches_the_kernels_off(reference, cache, monkeypatch):
    a, y = counting_inputs()
    monkeypatch.setenv("INFOPLANE_NO_NATIVE", "1")
    reason = _native.build("tiny", TINY, _native.compiler())
    assert reason == "INFOPLANE_NO_NATIVE is set in the environment"
    assert not cache.exists()
    with pytest.warns(count_kernel.KernelFallbackWarning, match="INFOPLANE_NO_NATIVE"):
        after = binned_mi(a, y, bins=30, range=(-1, 1))
    assert torch.equal(reference.ixt, after.ixt) and torch.equal(reference.ity, after.ity)
    with pytest.warns(fused.FusedFallbackWarning, match="INFOPLANE_NO_NATIVE"):
        assert "fused" not in fit_tiny().reason
    monkeypatch.setenv("INFOPLANE_NO_NATIVE", "0")
    assert not _native.disabled()


# -- OpenMP ------------------------------------------------------------------------------------------------------

TORCH = "/env/lib/python3.11/site-packages/torch"
SKLEARN_GOMP = "/env/lib/python3.11/site-packages/scikit_learn.libs/libgomp-e985bcbb.so.1.0.0"
OPENMP_INFO = "ATen/Parallel:\n\tat::get_num_threads() : 2\nOpenMP 201511 (a.k.a. OpenMP 4.5)\nATen parallel backend: OpenMP\n"
NATIVE_INFO = "ATen/Parallel:\n\tat::get_num_threads() : 2\nATen parallel backend: native thread pool\n"


def maps(*paths):
    return "".join(f"7f0000{i:04x}000-7f0000{i:04x}fff r-xp 00000000 fe:00 {i + 100}      {p}\n"
                   for i, p in enumerate((f"{TORCH}/lib/libtorch_cpu.so", *paths))) + "7ffd0000-7ffd1000 rw-p 0 0 0 [stack]\n"


@pytest.mark.parametrize("loaded, info, expected", [
    ((SKLEARN_GOMP,), OPENMP_INFO, False),                                         # scikit-learn's copy only
    ((f"{TORCH}/lib/libgomp.so.1",), OPENMP_INFO, True),                           # torch's own (pip wheels)
    ((f"{TORCH}/lib/libgomp.so.1", SKLEARN_GOMP), OPENMP_INFO, True),
    ((f"{TORCH}/lib/libgomp.so.1",), NATIVE_INFO, False),                          # torch without OpenMP
    ((f"{TORCH}.libs/libgomp-804f19d4.so.1",), OPENMP_INFO, False),                 # a renamed copy: not shareable
    ((f"{TORCH}/lib/libiomp5.so", "/usr/lib/x86_64-linux-gnu/libgomp.so.1"), OPENMP_INFO, False),  # Intel's
    (("/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",), OPENMP_INFO, True),          # torch linked to the system's
    (("/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0", SKLEARN_GOMP), OPENMP_INFO, True),
    (("/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0", "/usr/lib/llvm/libomp.so"), OPENMP_INFO, False),
    ((), OPENMP_INFO, False),
])
def test_openmp_only_on_the_libgomp_torch_loaded(loaded, info, expected):
    assert _native.uses_torch_gnu_openmp(maps(*loaded), TORCH, info) is expected


def test_openmp_flags_follow_this_process():
    with open("/proc/self/maps") as f:
        text = f.read()
    expected = _native.uses_torch_gnu_openmp(text, os.path.dirname(torch.__file__), torch.__config__.parallel_info())
    assert _native.openmp_flags() == (("-fopenmp",) if expected else ())


# -- the typed wrappers ------------------------------------------------------------------------------------------

class Uncallable:
    """A library whose functions must not be reached: the wrappers refuse bad arguments before any call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args)) or 0


def count_args(**over):
    items, n, d, bins = 2, 10, 3, 30
    kw = dict(acts=torch.zeros(items, n, d), mode=0, labels=torch.zeros(1, n, dtype=torch.int64), label_bits=1,
              bins=bins, scale=1.0, offset=0.0, edges=torch.zeros(bins + 1), table=np.zeros(n + 1),
              s_t=np.empty(items), s_ty=np.empty(items), k_t=np.empty(items, dtype=np.int64),
              k_ty=np.empty(items, dtype=np.int64), bad=np.empty(items, dtype=np.int64), threads=1)
    kw.update(over)
    return kw


def test_count_rows_passes_checked_arguments_in_the_c_order():
    lib = Uncallable()
    kw = count_args()
    assert kernels.count_rows(lib, **kw) == 0
    ((name, args),) = lib.calls
    assert name == "ip_count_rows" and len(args) == len(kernels.COUNT_ROWS_ARGTYPES)
    assert args[0] == kw["acts"].data_ptr() and args[3:6] == (2, 10, 3) and args[6] == kw["labels"].data_ptr()
    assert args[9:12] == (30, 1.0, 0.0) and args[13] == kw["table"].ctypes.data and args[-1] == 1
    assert args[14:19] == tuple(kw[k].ctypes.data for k in ("s_t", "s_ty", "k_t", "k_ty", "bad"))


@pytest.mark.parametrize("over, error, message", [
    (dict(acts=torch.zeros(2, 10, 3, dtype=torch.float16)), TypeError, "'acts' has dtype float16, expected float32"),
    (dict(acts=torch.zeros(2, 3, 10).transpose(1, 2)), ValueError, "'acts' is not contiguous"),
    (dict(acts=torch.zeros(10, 3)), ValueError, r"'acts' must be a \[B, N, d\] tensor"),
    (dict(labels=torch.zeros(1, 9, dtype=torch.int64)), ValueError, r"'labels' has shape \[1, 9\], expected \[1, 10\]"),
    (dict(labels=torch.zeros(3, 10, dtype=torch.int64)), ValueError, r"'labels' must be a \[2 or 1, 10\]"),
    (dict(labels=torch.zeros(1, 10, dtype=torch.int32)), TypeError, "'labels' has dtype int32, expected int64"),
    (dict(labels=torch.full((1, 10), 2)), ValueError, r"'labels' holds values outside 0 \.\. 1"),
    (dict(edges=torch.zeros(30)), ValueError, r"'edges' has shape \[30\], expected \[31\]"),
    (dict(edges=torch.zeros(31, dtype=torch.float64)), TypeError, "'edges' has dtype float64, expected float32"),
    (dict(table=np.zeros(10)), ValueError, r"'table' has shape \[10\], expected \[11\]"),
    (dict(table=[0.0] * 11), TypeError, "'table' must be a torch.Tensor or numpy array, not list"),
    (dict(s_t=np.empty(2, dtype=np.float32)), TypeError, "'s_t' has dtype float32, expected float64"),
    (dict(bad=np.empty(4, dtype=np.int64)[::2]), ValueError, "'bad' is not contiguous"),
    (dict(k_t=np.zeros(2, dtype=np.int64)[:1]), ValueError, r"'k_t' has shape \[1\], expected \[2\]"),
    (dict(mode=3), ValueError, r"'mode' is 3, outside 0 \.\. 2"),
    (dict(mode=2, bins=70000, edges=torch.zeros(70001)), ValueError, r"'bins' is 70000, outside 1 \.\. 65536"),
    (dict(threads=0), ValueError, "'threads' is 0"),
    (dict(label_bits=1.0), TypeError, "'label_bits' must be an int, not float"),
])
def test_count_rows_refuses_bad_arguments_before_the_call(over, error, message):
    lib = Uncallable()
    with pytest.raises(error, match=message):
        kernels.count_rows(lib, **count_args(**over))
    assert lib.calls == []


def test_count_rows_refuses_read_only_outputs_and_gpu_tensors():
    read_only = np.empty(2)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="'s_ty' is a read-only array"):
        kernels.count_rows(Uncallable(), **count_args(s_ty=read_only))
    with pytest.raises(ValueError, match="'acts' is on meta; the compiled kernels run on the CPU"):
        kernels.count_rows(Uncallable(), **count_args(acts=torch.zeros(2, 10, 3, device="meta")))


def fused_args(**over):
    dims, S, N, n = [4, 5, 2], 2, 40, 16
    T = kernels.params_per_seed(dims)
    kw = dict(dims=torch.tensor(dims), acts=torch.tensor([1], dtype=torch.int32), act_params=torch.zeros(2),
              quantised=torch.zeros(1, dtype=torch.int32), quant=torch.tensor([0.0, 0.0, 1.0]),
              params=torch.zeros(S, T), grads=torch.zeros(S, T), exp_avg=torch.zeros(S, T),
              exp_avg_sq=torch.zeros(S, T), inputs=torch.zeros(N, 4), labels=torch.zeros(N, dtype=torch.int64),
              order=torch.zeros(S, n, dtype=torch.int64), batch=8, optimizer=0,
              hyper=torch.zeros(5, dtype=torch.float64), step=ctypes.c_double(0.0), update=True, threads=1)
    kw.update(over)
    return kw


def test_fused_epoch_passes_checked_arguments_in_the_c_order():
    lib = Uncallable()
    kw = fused_args()
    assert kernels.fused_epoch(lib, **kw) == 0
    ((name, args),) = lib.calls
    assert name == "ip_fused_epoch" and len(args) == len(kernels.FUSED_EPOCH_ARGTYPES)
    assert args[:2] == (2, 2) and args[7] == kw["params"].data_ptr() and args[10] == kw["exp_avg_sq"].data_ptr()
    assert args[11:17] == (kw["inputs"].data_ptr(), kw["labels"].data_ptr(), 40, kw["order"].data_ptr(), 16, 8)
    assert args[17] == 0 and args[18] == kw["hyper"].data_ptr()
    assert args[20:] == (1, 1, None, None, None, None, None, None)


def test_a_fused_epoch_that_draws_its_orders_checks_their_arrays():
    lib = Uncallable()
    kw = fused_args()
    prepared = kernels.FusedEpoch(lib, **{k: v for k, v in kw.items() if k not in ("order", "step", "update")})
    states = np.zeros((2, 624), dtype=np.uint32)
    counters = np.ones((2, 2), dtype=np.int64)
    rows = torch.zeros(2, 16, dtype=torch.int64)
    assert prepared(kw["order"], kw["step"], True, draw=(states, counters, rows)) == 0
    ((_, args),) = lib.calls
    assert args[-3:] == (states.ctypes.data, counters.ctypes.data, rows.data_ptr())
    with pytest.raises(ValueError, match="training epochs only"):
        prepared(kw["order"], kw["step"], False, draw=(states, counters, rows))
    with pytest.raises(ValueError, match="'draw rows' has shape"):
        prepared(kw["order"], kw["step"], True, draw=(states, counters, rows[:, :5]))
    with pytest.raises(TypeError, match="'draw states' has dtype"):
        prepared(kw["order"], kw["step"], True, draw=(states.astype(np.int64), counters, rows))


def test_a_prepared_fused_epoch_checks_what_changes_at_every_call():
    # Checked once per fit: the fixed arrays; at every call: that they are still where and what they were, the
    # order, and the gradient statistics' arrays.
    lib = Uncallable()
    kw = fused_args()
    order, step = kw.pop("order"), kw.pop("step")
    kw.pop("update")
    call = kernels.FusedEpoch(lib, **kw)
    S, W = 2, 4 * 5 + 5 * 2
    assert call.weights == W
    stats = (torch.zeros(S, W, dtype=torch.float64), torch.zeros(S, W, dtype=torch.float64),
             torch.zeros(S, dtype=torch.float64))
    assert call(order, step, True, stats) == 0
    args = lib.calls[-1][1]
    assert args[14] == order.data_ptr() and args[-6:-3] == tuple(t.data_ptr() for t in stats)
    assert call(order, step, True, stats) == 0 and lib.calls[-1][1][-6:-3] == args[-6:-3]  # the same arrays again
    stats[1].resize_(S, W + 1)  # checked before, changed since
    with pytest.raises(ValueError, match=r"'stats m2' has shape \[2, 31\]"):
        call(order, step, True, stats)
    stats = (stats[0], torch.zeros(S, W, dtype=torch.float64), stats[2])
    for bad, error, message in [
        ((stats[0].float(), stats[1], stats[2]), TypeError, "'stats mean' has dtype float32"),
        ((stats[0], stats[1][:1], stats[2]), ValueError, r"'stats m2' has shape \[1, 30\], expected \[2, 30\]"),
        ((stats[0], stats[1], stats[2][:1]), ValueError, r"'stats count' has shape \[1\]"),
    ]:
        with pytest.raises(error, match=message):
            call(order, step, True, bad)
    with pytest.raises(ValueError, match=r"'order' has shape \[3, 16\], expected \[2, any\]"):
        call(torch.zeros(3, 16, dtype=torch.int64), step)
    with pytest.raises(TypeError, match="'order' has dtype int32"):
        call(order.int(), step)
    calls = len(lib.calls)
    kw["exp_avg"].resize_(4, 37)  # moved to new memory after it was checked
    with pytest.raises(ValueError, match="'exp_avg' was resized or moved"):
        call(order, step)
    kw["labels"].resize_(20)
    with pytest.raises(ValueError, match="'exp_avg' was resized or moved"):
        call(order, step)
    assert len(lib.calls) == calls


@needs_compiler
def test_the_kernel_refuses_rows_outside_the_inputs_before_reading_them():
    lib = fused_kernel.load()
    assert not isinstance(lib, str), lib
    kw = fused_args(labels=torch.ones(40, dtype=torch.int64), hyper=torch.tensor([1e-2, 0.9, 0.999, 1e-8, 0.0],
                                                                                 dtype=torch.float64))
    kw.pop("order"), kw.pop("step"), kw.pop("update")
    call = kernels.FusedEpoch(lib, **kw)
    before = kw["params"].clone()
    for row in (40, -1, 2**40):
        order = torch.zeros(2, 16, dtype=torch.int64)
        order[1, 11] = row
        assert call(order, ctypes.c_double(0.0)) == -4
    assert call(torch.zeros(2, 16, dtype=torch.int64), ctypes.c_double(0.0)) == 0
    assert not torch.equal(kw["params"], before)  # a valid order trains
    kw["labels"][7] = 2  # two classes: label 2 is out of range
    assert call(torch.full((2, 16), 7, dtype=torch.int64), ctypes.c_double(0.0)) == -1


@pytest.mark.parametrize("over, error, message", [
    (dict(params=torch.zeros(2, 37, dtype=torch.float64)), TypeError, "'params' has dtype float64, expected float32"),
    (dict(params=torch.zeros(2, 36)), ValueError, r"'params' has shape \[2, 36\], expected \[any, 37\]"),
    (dict(grads=torch.zeros(37, 2).t()), ValueError, "'grads' is not contiguous"),
    (dict(exp_avg=torch.zeros(3, 37)), ValueError, r"'exp_avg' has shape \[3, 37\], expected \[2, 37\]"),
    (dict(inputs=torch.zeros(40, 5)), ValueError, r"'inputs' has shape \[40, 5\], expected \[any, 4\]"),
    (dict(inputs=torch.zeros(40, 4, dtype=torch.float64)), TypeError, "'inputs' has dtype float64"),
    (dict(labels=torch.zeros(40, dtype=torch.int32)), TypeError, "'labels' has dtype int32, expected int64"),
    (dict(labels=torch.zeros(39, dtype=torch.int64)), ValueError, r"'labels' has shape \[39\], expected \[40\]"),
    (dict(order=torch.full((2, 16), 40)), ValueError, r"'order' holds rows outside 0 \.\. 39"),
    (dict(order=torch.zeros(2, 16, dtype=torch.int32)), TypeError, "'order' has dtype int32"),
    (dict(acts=torch.tensor([1])), TypeError, "'acts' has dtype int64, expected int32"),
    (dict(quant=torch.zeros(2)), ValueError, r"'quant' has shape \[2\], expected \[3\]"),
    (dict(hyper=torch.zeros(2, dtype=torch.float64)), ValueError, r"'hyper' has shape \[2\], expected \[5\]"),
    (dict(dims=torch.tensor([4])), ValueError, "'dims' must hold 2 .. 65 positive widths"),
    (dict(optimizer=2), ValueError, r"'optimizer' is 2, outside 0 \.\. 1"),
    (dict(batch=0), ValueError, "'batch' is 0"),
    (dict(step=0.0), TypeError, "'step' must be a ctypes.c_double"),
])
def test_fused_epoch_refuses_bad_arguments_before_the_call(over, error, message):
    lib = Uncallable()
    with pytest.raises(error, match=message):
        kernels.fused_epoch(lib, **fused_args(**over))
    assert lib.calls == []
