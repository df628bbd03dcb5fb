"""Matrix-based Rényi alpha-entropy and mutual information (Giraldo, Rao & Príncipe 2015; Yu et al. 2019).

For N samples a_i, the Gaussian Gram matrix K_ij = exp(-|a_i - a_j|^2 / (2 sigma^2)) has unit diagonal, so
A = K / trace(K) = K / N is positive semi-definite with trace 1, and

    S_alpha(A) = log2( sum_i lambda_i(A)^alpha ) / (1 - alpha)          (bits; alpha = 1: -sum lambda log2 lambda)

with eigenvalues clipped at 0 (rounding makes the smallest ones slightly negative; those below the
decomposition's rounding level, N eps lambda_max, count as 0). The joint entropy of two
variables uses the Hadamard product K_a * K_b over its trace; the mutual information is
I = S(A) + S(B) - S(A, B). Class labels use the delta kernel [y_i = y_j].

How it is computed:

- A Hadamard product of Gaussian kernels is one Gaussian kernel on the concatenated features, each scaled by its
  own 1 / sigma, so every joint Gram is that of one point set.
- With the delta kernel the joint matrix is block diagonal over classes: its spectrum is the union of the
  per-class blocks' spectra, so one eigendecomposition of size N_c per class replaces one of size N. The labels'
  own spectrum is known exactly: eigenvalues N_c / N.
- alpha = 2 needs no eigenvalues: sum lambda^2 = ||A||_F^2, summed a block of rows at a time.
- ``method="randomized"`` estimates tr(A^alpha) - tr(A) (tr A is exactly the block's share of N): the leading
  256 eigenvalues are taken as Ritz values of a randomized range finder (one power iteration), and the rest by
  stochastic Lanczos quadrature on A deflated by them: Rademacher probes, Lanczos with full
  re-orthogonalisation, Gauss quadrature of lambda^alpha - lambda on each probe's tridiagonal matrix. Estimating the difference rather than tr(A^alpha)
  itself removes the term that carries no information and most of the variance. The Gram is held in float32
  when it fits ``memory_budget``, and otherwise rebuilt a block of rows per product.

Ranges: S is clamped to [0, log2 N] and I to [0, min(S(A), S(B))]. Both hold exactly for the exact route
(Giraldo et al., propositions on Hadamard products), so the clamp only removes rounding and, for the randomized
route, estimation error that crosses a bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from infoplane._validate import check_choice, check_float, check_int
from infoplane.estimators._inputs import as_batch, as_labels, check_finite, result_dtype
from infoplane.estimators.base import keyword_options

SIGMA_RULES = ("silverman",)
METHODS = ("auto", "exact", "randomized")
AUTO_EXACT_MAX_N = 4096  # "auto" uses eigenvalues up to this N (an N = 4096 eigvalsh takes seconds on a CPU)
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes: the randomized route keeps a float32 Gram up to this size
_ROWS = 256  # rows per block of the streamed Gram
# Randomized route: leading Ritz pairs taken exactly before the probes (measured at N = 2048, alpha = 1.01:
# rms error 0.047 bits with 64, 0.027 with 128, 0.005 with 256, for 1.8x the time of 64).
DEFLATION_RANK = 256


@dataclass
class RenyiResult:
    """Result of :func:`renyi_mi`; all fields in bits, shape of the (broadcast) batch dimensions.

    Attributes
    ----------
    mi : torch.Tensor
        I_alpha(A;B) = S(A) + S(B) - S(A,B), clamped to [0, min(S(A), S(B))].
    s_a, s_b, s_ab : torch.Tensor
        The entropies it is made of, each clamped to [0, log2 N].
    sigma_a, sigma_b : torch.Tensor
        Kernel widths used (NaN-free; 0 for the delta kernel of labels).
    """

    mi: torch.Tensor
    s_a: torch.Tensor
    s_b: torch.Tensor
    s_ab: torch.Tensor
    sigma_a: torch.Tensor
    sigma_b: torch.Tensor


def check_sigma(sigma: Union[str, float], name: str = "sigma") -> Union[str, float]:
    """A sigma rule name or a positive float.

    Parameters
    ----------
    sigma : str or float
        One of ``SIGMA_RULES`` or a positive finite width.
    name : str, default "sigma"
        The parameter's name, for the message.

    Returns
    -------
    str or float
    """
    if isinstance(sigma, str):
        if sigma not in SIGMA_RULES:
            raise ValueError(f"{name} must be a positive number or one of {SIGMA_RULES}; got {sigma!r}")
        return sigma
    return check_float(sigma, name, positive=True)


def check_alpha(alpha: float) -> float:
    """The order alpha: a positive finite number, as ``float``."""
    return check_float(alpha, "alpha", positive=True)


def sigma_of(x: torch.Tensor, rule: Union[str, float]) -> float:
    """Kernel width for the samples ``x`` [N, d] under ``rule``.

    ``"silverman"``: sigma = s * (4 / (d + 2))^(1 / (d + 4)) * N^(-1 / (d + 4)), where s^2 is the total variance
    (trace of the covariance) of the layer. For d = 1 this is Silverman's rule of thumb. Using the total rather
    than the per-unit variance keeps the kernel from collapsing to the identity on wide layers (typical
    squared distances grow like the total variance). A constant layer gets sigma = 1 (all distances are 0).
    A float is used as given.
    """
    if not isinstance(rule, str):
        return float(rule)
    n, d = x.shape
    s2 = float(x.var(dim=0, unbiased=True).sum()) if n > 1 else 0.0
    if not s2 > 0:
        return 1.0
    return math.sqrt(s2) * (4.0 / (d + 2)) ** (1.0 / (d + 4)) * n ** (-1.0 / (d + 4))


def _sq_dists(z: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    # differences, not the |a|^2 + |b|^2 - 2ab product form, which cancels badly for points far from the origin
    d = torch.cdist(z[i0:i1], z, compute_mode="donot_use_mm_for_euclid_dist").square_()
    d.diagonal(offset=i0).zero_()  # exactly 0: the kernel's diagonal is exactly 1
    return d


def _gram(z: torch.Tensor) -> torch.Tensor:
    n = z.shape[0]
    k = torch.empty(n, n, dtype=z.dtype, device=z.device)
    for i0 in range(0, n, _ROWS):
        i1 = min(n, i0 + _ROWS)
        torch.exp(_sq_dists(z, i0, i1).mul_(-0.5), out=k[i0:i1])
    return k


def _frobenius_sq(z: torch.Tensor) -> torch.Tensor:
    """sum_ij K_ij^2 for the unit-width Gaussian kernel on z, streamed by blocks of rows."""
    n = z.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for i0 in range(0, n, _ROWS):
        i1 = min(n, i0 + _ROWS)
        total += torch.exp(_sq_dists(z, i0, i1).mul_(-1.0)).sum(dtype=torch.float64)  # K^2 = exp(-D)
    return total


def _power_sum_exact(z: torch.Tensor, scale: float, alpha: float) -> torch.Tensor:
    """sum lambda^alpha of A = scale * K(z), eigenvalues clipped at 0 (alpha = 1: -sum lambda ln lambda)."""
    lam = torch.linalg.eigvalsh(_gram(z).mul_(scale))
    # Eigenvalues below the rounding level of the decomposition (N eps lambda_max) are zeros in disguise; for
    # alpha < 1 their powers would add up to visible error, so they are set to 0 (the rest is only clipped at 0).
    lam = torch.where(lam > lam.shape[0] * torch.finfo(lam.dtype).eps * lam.max(), lam, torch.zeros_like(lam))
    if alpha == 1.0:
        return -torch.special.xlogy(lam, lam).sum()
    return lam.pow(alpha).sum()


class _GramOperator:
    """Products with A = scale * K(z): from a float32 copy of K when it fits the budget, else streamed."""

    def __init__(self, z, scale, budget):
        self.z, self.scale = z, scale
        n = z.shape[0]
        self.k = None
        if n * n * 4 <= budget:  # a float32 Gram, built a block of rows at a time
            self.k = torch.empty(n, n, dtype=torch.float32, device=z.device)
            for i0 in range(0, n, _ROWS):
                i1 = min(n, i0 + _ROWS)
                self.k[i0:i1] = torch.exp(_sq_dists(z, i0, i1).mul_(-0.5))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v32 = v.to(torch.float32)
        if self.k is not None:
            return (self.k @ v32).to(v.dtype).mul_(self.scale)
        n = self.z.shape[0]
        out = torch.empty_like(v)
        for i0 in range(0, n, _ROWS):
            i1 = min(n, i0 + _ROWS)
            kb = torch.exp(_sq_dists(self.z, i0, i1).mul_(-0.5)).to(torch.float32)
            out[i0:i1] = (kb @ v32).to(v.dtype)
        return out.mul_(self.scale)


def _g(lam, alpha):
    lam = lam.clamp(min=0)
    return -torch.special.xlogy(lam, lam) if alpha == 1.0 else lam.pow(alpha) - lam


def _deflate(op, n, rank, generator):
    """Top-``rank`` Ritz pairs of A by a randomized range finder with one power iteration.

    Returns (Q [n, rank] orthonormal, Ritz values). A's leading eigenvalues carry most of tr(A^alpha) and most of
    the probe variance; taking them exactly leaves the probes the flat remainder.
    """
    om = torch.randint(0, 2, (n, rank), generator=generator, dtype=torch.int64).to(op.z.device, torch.float64)
    q = torch.linalg.qr(op(2 * om - 1)).Q
    q = torch.linalg.qr(op(q)).Q
    b = q.T @ op(q)
    return q, torch.linalg.eigvalsh((b + b.T) / 2)


def _slq_excess(op, n, alpha, probes, steps, generator, rank=0):
    """Stochastic Lanczos quadrature of tr(A^alpha) - tr(A) (tr(-A ln A) for alpha = 1).

    With ``rank`` > 0 the top Ritz pairs are taken exactly and the probes see A deflated by them.
    Returns (exact part, per-probe estimates of the rest divided by n).
    """
    dev = op.z.device
    dt = torch.float64
    exact_part = torch.zeros((), dtype=dt, device=dev)
    if rank > 0 and rank < n:
        basis_q, ritz = _deflate(op, n, rank, generator)
        exact_part = _g(ritz, alpha).sum()
        inner = op

        def op(v):  # (I - QQ^T) A (I - QQ^T) v
            v = v - basis_q @ (basis_q.T @ v)
            w = inner(v)
            return w - basis_q @ (basis_q.T @ w)
    m = min(steps, n)
    z = torch.randint(0, 2, (probes, n), generator=generator, dtype=torch.int64).to(device=dev, dtype=dt)
    q = (2 * z - 1) / math.sqrt(n)  # [probes, n]: one Lanczos sequence per probe, all advanced together
    basis = torch.empty(probes, m, n, dtype=dt, device=dev)
    alphas = torch.zeros(m, probes, dtype=dt, device=dev)
    betas = torch.zeros(m, probes, dtype=dt, device=dev)
    for j in range(m):
        basis[:, j] = q
        w = op(q.T).T.contiguous()
        alphas[j] = (q * w).sum(1)
        # full re-orthogonalisation against every earlier vector (twice is enough in floating point)
        v = basis[:, : j + 1]
        for _ in range(2):
            w -= torch.bmm(torch.bmm(w[:, None, :], v.transpose(1, 2)), v)[:, 0]
        b = w.norm(dim=1)
        alive = b > 1e-10
        betas[j] = torch.where(alive, b, torch.zeros_like(b))
        q = torch.where(alive[:, None], w / torch.where(alive, b, torch.ones_like(b))[:, None], torch.zeros_like(w))
    t = torch.diag_embed(alphas.T) + torch.diag_embed(betas.T[:, :-1], 1) + torch.diag_embed(betas.T[:, :-1], -1)
    theta, u = torch.linalg.eigh(t)
    # |q0|^2 = 1; the n of Hutchinson cancels against q0 = z / sqrt(n)
    return exact_part, (u[:, 0, :].square() * _g(theta, alpha)).sum(1)


def _power_sum(z, scale, alpha, method, probes, steps, generator, budget, rank=None):
    """sum lambda^alpha (alpha = 1: Shannon sum) of A = scale * K(z) by the requested route."""
    n = z.shape[0]
    trace = scale * n
    if n == 1:
        return torch.tensor(-math.log(trace) * trace if alpha == 1.0 else trace ** alpha, dtype=torch.float64,
                            device=z.device)
    if alpha == 2.0:
        return _frobenius_sq(z) * scale**2
    exact = method == "exact" or (method == "auto" and n <= AUTO_EXACT_MAX_N)
    if exact:
        return _power_sum_exact(z, scale, alpha)
    exact_part, per_probe = _slq_excess(_GramOperator(z, scale, budget), n, alpha, probes, steps, generator,
                                        min(DEFLATION_RANK if rank is None else rank, n // 4))
    return exact_part + per_probe.mean() * n + (0.0 if alpha == 1.0 else trace)


def _entropy_from_sum(s, alpha, n):
    """Bits, clamped to [0, log2 n]."""
    if alpha == 1.0:
        h = s / math.log(2)
    else:
        h = torch.log2(torch.clamp(s, min=1e-300)) / (1.0 - alpha)
    return h.clamp(0.0, math.log2(n))


class _Kernel:
    """One side of an entropy: Gaussian features z = x / sigma, or class labels (delta kernel)."""

    def __init__(self, x=None, sigma=None, labels=None):
        self.x, self.sigma, self.labels = x, sigma, labels

    @classmethod
    def gaussian(cls, x, rule):
        s = sigma_of(x, rule)
        return cls(x / s, s)


class _Engine:
    def __init__(self, alpha, method, probes, steps, seed, budget):
        self.alpha, self.method, self.probes, self.steps = alpha, method, probes, steps
        self.budget = budget
        self.generator = torch.Generator().manual_seed(int(seed))

    def entropy(self, *kernels: _Kernel) -> torch.Tensor:
        """S_alpha of the normalised Hadamard product of the given kernels (at most one of them labels)."""
        feats = [k.x for k in kernels if k.labels is None]
        labels = [k.labels for k in kernels if k.labels is not None]
        n = (feats[0] if feats else labels[0]).shape[0]
        if not feats:  # delta kernel alone: eigenvalues N_c / N
            p = torch.bincount(labels[0]).to(torch.float64)
            p = p[p > 0] / n
            s = -torch.special.xlogy(p, p).sum() if self.alpha == 1.0 else p.pow(self.alpha).sum()
            return _entropy_from_sum(s, self.alpha, n)
        z = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        run = lambda zz: _power_sum(zz, 1.0 / n, self.alpha, self.method, self.probes,  # noqa: E731
                                    self.steps, self.generator, self.budget)
        if not labels:
            return _entropy_from_sum(run(z), self.alpha, n)
        y = labels[0]
        s = sum(run(z[y == c]) for c in torch.unique(y))  # block diagonal over classes
        return _entropy_from_sum(s, self.alpha, n)

    def mi(self, ka: _Kernel, kb: _Kernel, s_a=None, s_b=None):
        s_a = self.entropy(ka) if s_a is None else s_a
        s_b = self.entropy(kb) if s_b is None else s_b
        s_ab = self.entropy(ka, kb)
        mi = torch.minimum(torch.clamp(s_a + s_b - s_ab, min=0.0), torch.minimum(s_a, s_b))
        return mi, s_a, s_b, s_ab


def _settings(alpha, method, probes, steps, memory_budget):
    alpha = check_alpha(alpha)
    check_choice(method, "method", METHODS)
    for v, name in ((probes, "probes"), (steps, "steps")):
        check_int(v, name, minimum=1, what="a positive integer")
    budget = (DEFAULT_MEMORY_BUDGET if memory_budget is None
              else int(check_float(memory_budget, "memory_budget", positive=True)))
    return alpha, budget


def _side(x, sigma, name, batch_like=None):
    """A variable as (kernels per batch item, batch shape, n): 1-D integers are labels, else activations."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.ndim == 1:
        if t.is_floating_point() and not bool((t == torch.round(t)).all()):
            raise ValueError(f"{name}: a 1-D input is read as class labels and must hold whole numbers; "
                             "give continuous data as [N, 1].")
        y = torch.unique(t, return_inverse=True)[1]
        return [_Kernel(labels=y)], (), t.shape[0], [0.0]
    batch = as_batch(t)
    check_finite(batch.acts, batch)
    dt = torch.float32 if batch.device.type == "mps" else torch.float64
    ks, sigmas = [], []
    for item in batch.acts.to(dt):
        k = _Kernel.gaussian(item, sigma)
        ks.append(k)
        sigmas.append(k.sigma)
    return ks, batch.batch_shape, batch.n, sigmas


@keyword_options("alpha", "sigma")
def renyi_entropy(a: Any, *, alpha: float = 1.01, sigma: Union[str, float] = "silverman", method: str = "auto",
                  probes: int = 32, steps: int = 30, seed: int = 0,
                  memory_budget: Optional[int] = None) -> torch.Tensor:
    """Matrix-based Rényi alpha-entropy S_alpha(A) of a batch of sample sets, in bits.

    Parameters
    ----------
    a : torch.Tensor or numpy.ndarray
        Activations ``[..., N, d]`` (Gaussian kernel; leading dimensions are a batch), or 1-D class labels ``[N]``
        (delta kernel).
    alpha : float, default 1.01
        Order (> 0); 1 gives the von Neumann (Shannon) form, 2 uses the Frobenius norm without eigenvalues.
    sigma : "silverman" or float, default "silverman"
        Kernel width rule (see :func:`sigma_of`) or a fixed width in the activations' units.

        Every option is keyword-only; ``alpha`` and ``sigma`` passed by position (second and third) still work,
        with a ``DeprecationWarning``.
    method : {"auto", "exact", "randomized"}, default "auto"
        Eigenvalues (``torch.linalg.eigvalsh``) or stochastic Lanczos quadrature; "auto" is exact up to
        N = 4096. Ignored for alpha = 2 (always exact, streamed).
    probes, steps : int, default 32, 30
        Randomized route: number of Rademacher probes and Lanczos steps.
    seed : int, default 0
        Seed of the randomized route's own generator (the global RNG is not touched).
    memory_budget : int, optional
        Bytes the randomized route may use to keep the Gram matrix (default 2 GiB; beyond it, rows are rebuilt).

    Returns
    -------
    torch.Tensor
        Bits, float64, shape ``a.shape[:-2]`` (``()`` for labels), clamped to [0, log2 N].
    """
    alpha, budget = _settings(alpha, method, probes, steps, memory_budget)
    sigma = check_sigma(sigma)
    ks, shape, n, _ = _side(a, sigma, "a")
    eng = _Engine(alpha, method, int(probes), int(steps), seed, budget)
    vals = torch.stack([eng.entropy(k) for k in ks])
    return vals.reshape(shape)


@keyword_options("alpha", "sigma_a", "sigma_b")
def renyi_mi(a: Any, b: Any, *, alpha: float = 1.01, sigma_a: Union[str, float] = "silverman",
             sigma_b: Union[str, float] = "silverman", method: str = "auto", probes: int = 32, steps: int = 30,
             seed: int = 0, memory_budget: Optional[int] = None) -> RenyiResult:
    """Matrix-based Rényi mutual information I_alpha(A;B) = S(A) + S(B) - S(A,B), in bits.

    Parameters
    ----------
    a, b : torch.Tensor or numpy.ndarray
        ``[..., N, d]`` activations (Gaussian kernel) or 1-D ``[N]`` class labels (delta kernel), paired sample by
        sample. One of them may have batch dimensions; the other is then shared by every batch item.
    alpha : float, default 1.01
        Order, as in :func:`renyi_entropy`.
    sigma_a, sigma_b : "silverman" or float
        Kernel width rule or fixed width of each side (ignored for labels).

        Every option is keyword-only; ``alpha``, ``sigma_a`` and ``sigma_b`` passed by position still work, with
        a ``DeprecationWarning``.
    method, probes, steps, seed, memory_budget
        As in :func:`renyi_entropy`.

    Returns
    -------
    RenyiResult
        ``mi`` and the entropies ``s_a``, ``s_b``, ``s_ab`` (bits, float64), and the widths used.
    """
    alpha, budget = _settings(alpha, method, probes, steps, memory_budget)
    ka, shape_a, na, sig_a = _side(a, check_sigma(sigma_a, "sigma_a"), "a")
    kb, shape_b, nb, sig_b = _side(b, check_sigma(sigma_b, "sigma_b"), "b")
    if na != nb:
        raise ValueError(f"renyi_mi: a has {na} samples and b has {nb}; they must be paired sample by sample.")
    if len(ka) > 1 and len(kb) > 1 and len(ka) != len(kb) or (len(ka) > 1 and len(kb) > 1 and shape_a != shape_b):
        raise ValueError(f"renyi_mi: batch shapes {shape_a} and {shape_b} differ; give both the same leading "
                         "dimensions or one of them none.")
    if all(k.labels is not None for k in ka + kb):
        raise ValueError("renyi_mi: both a and b are labels; use a plug-in estimate for two discrete variables.")
    eng = _Engine(alpha, method, int(probes), int(steps), seed, budget)
    items = max(len(ka), len(kb))
    shape = shape_a if len(ka) >= len(kb) else shape_b
    s_shared: dict[str, torch.Tensor] = {}
    out = []
    for i in range(items):
        a_i, b_i = ka[i if len(ka) > 1 else 0], kb[i if len(kb) > 1 else 0]
        # the entropy of a side shared by every item is computed once
        s_a = s_shared.setdefault("a", eng.entropy(a_i)) if len(ka) == 1 else None
        s_b = s_shared.setdefault("b", eng.entropy(b_i)) if len(kb) == 1 else None
        out.append(torch.stack(eng.mi(a_i, b_i, s_a, s_b)))
    res = torch.stack(out).to(result_dtype(ka[0].labels.device if ka[0].labels is not None else ka[0].x.device))
    sa = torch.tensor(sig_a * (items if len(sig_a) == 1 else 1), dtype=torch.float64)
    sb = torch.tensor(sig_b * (items if len(sig_b) == 1 else 1), dtype=torch.float64)
    return RenyiResult(mi=res[:, 0].reshape(shape), s_a=res[:, 1].reshape(shape), s_b=res[:, 2].reshape(shape),
                       s_ab=res[:, 3].reshape(shape), sigma_a=sa.reshape(shape), sigma_b=sb.reshape(shape))


def renyi_plane(activations: Any, labels: Any, inputs: Any = None, *, alpha: float = 1.01,
                sigma: Union[str, float] = "silverman", sigma_inputs: Union[str, float] = "silverman",
                method: str = "auto", probes: int = 32, steps: int = 30, seed: int = 0,
                memory_budget: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """I(X;T) and I(T;Y) of a batch of layer-epochs by the matrix-based Rényi functional (bits).

    I(X;T) uses the Gram matrix of the probe ``inputs`` ([N, ...], flattened per sample) when given; without
    them X is the sample's identity (delta kernel on distinct samples, K_X = identity), for which
    I(X;T) = S(T) exactly. I(T;Y) uses the delta kernel of the labels. S(T) is computed once for both.

    Returns
    -------
    tuple of torch.Tensor
        (ixt, ity), float64, shape ``activations.shape[:-2]``.
    """
    alpha, budget = _settings(alpha, method, probes, steps, memory_budget)
    sigma = check_sigma(sigma)
    batch = as_batch(activations)
    y, _ = as_labels(labels, batch)
    check_finite(batch.acts, batch)
    dt = torch.float32 if batch.device.type == "mps" else torch.float64
    eng = _Engine(alpha, method, int(probes), int(steps), seed, budget)
    kx = s_x = None
    if inputs is not None:
        x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
        x = x.reshape(x.shape[0], -1).to(device=batch.device, dtype=dt)
        if x.shape[0] != batch.n:
            raise ValueError(f"inputs have {x.shape[0]} samples but the activations have N = {batch.n}; "
                             "pass the probe inputs the activations were recorded on.")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("inputs contain NaN or inf; the Rényi estimator needs finite probe inputs.")
        kx = _Kernel.gaussian(x, check_sigma(sigma_inputs, "sigma_inputs"))
        s_x = eng.entropy(kx)
    ixt, ity = [], []
    for i, item in enumerate(batch.acts.to(dt)):
        kt = _Kernel.gaussian(item, sigma)
        ky = _Kernel(labels=y[i if y.shape[0] > 1 else 0])
        s_t = eng.entropy(kt)
        ity.append(eng.mi(kt, ky, s_a=s_t)[0])
        ixt.append(s_t if kx is None else eng.mi(kx, kt, s_a=s_x, s_b=s_t)[0])
    shape = batch.batch_shape
    rd = result_dtype(batch.device)
    return torch.stack(ixt).to(rd).reshape(shape), torch.stack(ity).to(rd).reshape(shape)
