"""Mutual information of a noisy layer by Monte-Carlo estimation of Gaussian-mixture entropies.

The layer's N probe rows c_1..c_N are the centres; X is uniform over them and the noisy layer is
T' = c_X + Z with Z ~ N(0, s^2 I_d) independent of X. Then p(t | x = i) = N(t; c_i, s^2 I) and p(t) is the
uniform mixture of those N Gaussians, so

    I(X;T') = h(T') - (d/2) log(2 pi e s^2) = E[log p(t | i) - log p(t)]
    I(T';Y) = h(T') - sum_y p(y) h(T' | Y=y)   = E[log p_y(t) - log p(t)]

where p_y is the mixture of the centres of class y (a uniform X restricted to class y is uniform over its
centres), and the expectations are over (i, t) drawn jointly: i uniform, t = c_i + s z. Both are estimated by
averaging over ``samples`` such draws. The paired form E[log p(t|i) - log p(t)] is used instead of estimating
h(T') alone: the two logs move together, which removes most of the Monte-Carlo noise (for centres far apart
every draw gives exactly log N).

Control variates with exactly known means (the same log-ratios under the moment-matched Gaussians, and
log N / N_y, whose mean is the plug-in H(Y)) are subtracted with coefficients fitted on the draws; near-Gaussian
mixtures then need far fewer draws.

Unlike the Kolchinsky-Tracey bounds (:func:`infoplane.estimators.kde_mi`), which bracket I(X;T'), this is a
consistent estimate of it with a standard error: exactly unbiased without the control variates, biased by
O(1/samples) with them (fitted coefficients), before clamping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from infoplane._validate import check_bool, check_choice, check_float, check_int
from infoplane.estimators._inputs import as_batch, as_labels, check_finite, result_dtype
from infoplane.estimators.base import PlaneResult, keyword_options

DEFAULT_SAMPLES = 4096
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes for the [block, N] temporaries of one block of draws
# Draws per block when the budget allows more: a block's [rows, N] exponents then stay in cache across the
# few passes made over them.
_CACHE_ROWS = 256
_CACHE_ELEMENTS = 2**20  # ... or more rows for few centres, so that small problems take few passes
_PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class NoisyResult(PlaneResult):
    """Result of :func:`noisy_mi`. All fields in bits, float tensors of shape ``activations.shape[:-2]``.

    Attributes
    ----------
    ixt : torch.Tensor
        Estimate of I(X;T'), clamped to [0, log2 N].
    ity : torch.Tensor
        Estimate of I(T';Y), clamped to [0, H(Y)] (H(Y) of the probe labels of that batch item).
    ixt_se, ity_se : torch.Tensor
        Monte-Carlo standard errors of the **unclamped** estimates (sample standard deviation of the per-draw
        terms over sqrt(samples)).
    """

    ixt_se: torch.Tensor
    ity_se: torch.Tensor


def _draws(n: int, d: int, samples: int, seed: int):
    """The random part, drawn on the CPU in float64 from a local generator: the same numbers for a given
    (seed, N, d, samples) on every device, and shared by every batch item (common random numbers)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    idx = torch.randint(n, (samples,), generator=g)
    z = torch.randn(samples, d, generator=g, dtype=torch.float64)
    return idx, z


def _inverse_factors(c, onehot, s2):
    """Inverse Cholesky factors of the moment-matched Gaussians of the mixture and of each class's mixture.

    The mixture of N(c_j, s^2 I) over centres j (uniform) has mean mean(c_j) and covariance
    cov(c_j) + s^2 I (population covariance); so has each class's mixture over its own centres. Returns
    (L^-1 of the whole mixture, class means [C, d], L_k^-1 per class [C, d, d]).
    """
    n, d = c.shape
    eye = torch.eye(d, dtype=c.dtype, device=c.device)

    def inv_chol(cov):
        return torch.linalg.solve_triangular(torch.linalg.cholesky(cov + s2 * eye), eye, upper=False)

    counts = onehot.sum(dim=0)
    means = (onehot.T @ c) / counts.clamp(min=1)[:, None]
    invs = []
    for k in range(onehot.shape[1]):
        ck = c[onehot[:, k] > 0] - means[k]
        invs.append(inv_chol(ck.T @ ck / max(1, ck.shape[0])))
    return inv_chol(c.T @ c / n), means, torch.stack(invs)  # c is centred


def _per_draw_terms(c, y, idx, z, s2, rows, control):
    """Per-draw terms (nats) of I(X;T') and I(T';Y) for one batch item, and their control variates.

    c : [N, d] centres (compute dtype), y : [N] int64 labels, idx : [M] int64, z : [M, d] (compute dtype).
    Returns the two [M] term tensors and a list of zero-mean control variates ([M, k] tensors) for each.
    """
    n = c.shape[0]
    # Centring keeps |t|^2 + |c|^2 - 2 t.c from cancelling badly (and makes the mixture's mean 0).
    c = c - c.mean(dim=0, keepdim=True)
    inv = 1.0 / (2.0 * s2)
    onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).to(c.dtype)
    counts = onehot.sum(dim=0)
    t_all = c[idx] + math.sqrt(s2) * z
    own_all = -0.5 * (z * z).sum(dim=1)  # log N(t; c_i) up to the shared constant: exact, no cancellation
    y_all = y[idx]
    # log(N / N_y) of each draw: its mean over uniform i is exactly the plug-in H(Y) (a control variate).
    log_class = math.log(n) - torch.log(counts[y_all])
    ones = torch.ones(n, 1, dtype=c.dtype, device=c.device)
    # One GEMM gives the exponent -|t - c_j|^2 / (2 s^2) directly: [2a t, -a, -a|t|^2] . [c_j, |c_j|^2, 1].
    right = torch.cat([c, (c * c).sum(dim=1, keepdim=True), ones], dim=1)
    left_all = torch.cat([(2 * inv) * t_all, torch.full_like(own_all[:, None], -inv),
                          -inv * (t_all * t_all).sum(dim=1, keepdim=True)], 1)
    lse_all, lse_own = torch.empty_like(own_all), torch.empty_like(own_all)
    for k0 in range(0, idx.shape[0], rows):
        k1 = min(idx.shape[0], k0 + rows)
        i, own = idx[k0:k1], own_all[k0:k1]
        e = left_all[k0:k1] @ right.T
        # The draw's own centre, whose term dominates when centres are far apart, is set exactly.
        e.scatter_(1, i[:, None], own[:, None])
        top = e.amax(dim=1, keepdim=True)
        e.sub_(top).exp_()
        per_class = e @ onehot  # [rows, C]: kernel sums over each class's centres
        lse_all[k0:k1] = per_class.sum(dim=1).log_() + top[:, 0]
        # The own class holds the own centre, so its sum is at least exp(own - top); the bound only binds when
        # that term underflowed (a draw far closer to another class's centre than to its own).
        lse_own[k0:k1] = torch.maximum(per_class.gather(1, y_all[k0:k1, None])[:, 0].log() + top[:, 0], own)
    tx = own_all + math.log(n) - lse_all
    ty = lse_own - lse_all + log_class
    if not control:
        return tx, ty, [], []
    p = counts[counts > 0] / n
    cvy = [(log_class + (p * torch.log(p)).sum())[:, None]]
    if float(tx.std()) < 1e-12:
        # Centres far apart relative to the noise: every draw gives log N, the mixture is nowhere near a
        # Gaussian, and the d x d factors below would be wasted work.
        return tx, ty, [], cvy
    # log p(t|i) - log q(t) and log q_y(t) - log q(t) minus their exact means (q, q_y: the moment-matched
    # Gaussians): E[-|z|^2/2] = -d/2 and E[|L^-1 t|^2 / 2] = d/2, and likewise class by class.
    linv, means, linvs = _inverse_factors(c, onehot, s2)
    w = t_all @ linv.T
    q = 0.5 * (w * w).sum(dim=1)
    qy = torch.empty_like(q)
    for k in range(onehot.shape[1]):
        sel = y_all == k
        wk = (t_all[sel] - means[k]) @ linvs[k].T
        qy[sel] = 0.5 * (wk * wk).sum(dim=1)
    return tx, ty, [(own_all + q)[:, None]], cvy + [(q - qy)[:, None]]


def _controlled(term, cvs):
    """Regression (control-variate) estimate of E[term] given zero-mean control variates ``cvs`` (a list of
    [M, k] tensors): the estimate and its standard error. The coefficients are fitted on the same draws
    (a bias of order 1/samples)."""
    m = term.shape[0]
    if not cvs:
        return term.mean(), term.std() / math.sqrt(m)
    v = torch.cat(cvs, dim=1)
    vc, tc = v - v.mean(dim=0), term - term.mean()
    # Least squares through the (tiny) normal equations; pinv copes with a constant (all-zero) column.
    beta = torch.linalg.pinv(vc.T @ vc) @ (vc.T @ tc)
    resid = term - v @ beta
    return resid.mean(), resid.std() / math.sqrt(m)


@keyword_options("noise_var")
def noisy_mi(activations: Any, labels: Any, *, noise_var: float, samples: int = DEFAULT_SAMPLES, seed: int = 0,
             precision: str = "float64", control_variate: bool = True,
             memory_budget: Optional[int] = None) -> NoisyResult:
    """Monte-Carlo estimates of I(X;T') and I(T';Y) for T' = T + N(0, noise_var I), X uniform on the probe rows.

    Each batch item's N rows are the centres of a Gaussian mixture; ``samples`` points are drawn from it and
    the log densities of every draw under the whole mixture and under its class's mixture are evaluated
    exactly (log-sum-exp over all N centres). See the module docstring for the identities used.

    Cost per batch item: about 2 * samples * N * d multiply-adds (one matrix product) plus a few passes over
    a [samples, N] array of exponents (``exp`` of samples * N numbers dominates for narrow layers), plus, with
    the control variate, (C + 1) Cholesky factors of d x d matrices and 2 * samples * d^2 for solves. Draws
    are processed in blocks so that memory stays within ``memory_budget``; the draws themselves take
    samples * d floats. The standard error falls as 1 / sqrt(samples).

    Parameters
    ----------
    activations : torch.Tensor or numpy.ndarray, shape [..., N, d]
        Noise-free layer outputs (the mixture centres); leading dimensions are a batch.
    labels : tensor or array
        Class indices [N] or [..., N], or one-hot [N, C] / [..., N, C].
    noise_var : float
        Variance s^2 of the noise added to every unit, in squared activation units. Keyword only (passing it
        third by position is deprecated).
    samples : int, default 4096
        Monte-Carlo draws per batch item.
    seed : int, default 0
        Seed of a local ``torch.Generator`` (the global RNG is not used). The draws are made on the CPU and
        shared by all batch items, so a result depends only on (seed, samples, N, d) and the data, not on the
        device, the batch position or the memory budget (up to floating-point summation order).
    precision : {"float64", "float32"}, default "float64"
        Arithmetic of the distance products. float32 is faster and adequate when squared activations are
        small relative to noise_var / 1e-6. Process-wide settings are left alone: with float32 on a GPU where
        the caller enabled TF32 matrix products, those round the distances; use float64 there.
    control_variate : bool, default True
        Subtract quantities whose expectation is known exactly, scaled by coefficients fitted on the draws
        (regression estimator): for I(X;T') the same log-ratio under the moment-matched Gaussian,
        log p(t|i) - log q(t); for I(T';Y) the Gaussian log q_y(t) - log q(t) and log(N / N_y), whose mean is
        the plug-in H(Y). Near-Gaussian mixtures (wide, overlapping centres) then need 10-20x fewer draws
        for the same error (measured: standard error 0.002 instead of 0.03 bits at N = 4096, d = 1,
        2048 draws); well-separated centres lose nothing (the coefficients go to 0). Costs a d x d Cholesky
        factor per class and about 2 * samples * d^2 multiply-adds. The fitted coefficients add a bias of
        order 1/samples; False gives the plain average, exactly unbiased.
    memory_budget : int, optional
        Bytes for the [block, N] temporaries (default 256 MiB).

    Returns
    -------
    NoisyResult
        ``ixt``, ``ity`` (bits, clamped to [0, log2 N] and [0, H(Y)]) and ``ixt_se``, ``ity_se`` (bits,
        standard errors of the unclamped estimates), float64 (float32 on MPS), on the activations' device.
    """
    s2 = check_float(noise_var, "noise_var", positive=True)
    samples = check_int(samples, "samples", minimum=2, what="an integer >= 2 (Monte-Carlo draws per item)")
    seed = check_int(seed, "seed")
    precision = check_choice(precision, "precision", sorted(_PRECISIONS))
    control_variate = check_bool(control_variate, "control_variate")
    budget = (DEFAULT_MEMORY_BUDGET if memory_budget is None
              else int(check_float(memory_budget, "memory_budget", positive=True)))
    batch = as_batch(activations)
    y, _ = as_labels(labels, batch)
    acts = batch.acts
    check_finite(acts, batch)
    n, d = acts.shape[-2], acts.shape[-1]
    dtype = _PRECISIONS[precision] if acts.device.type != "mps" else torch.float32
    out_dtype = result_dtype(batch.device)
    idx, z = _draws(n, d, samples, seed)
    idx, z = idx.to(batch.device), z.to(device=batch.device, dtype=dtype)
    per_row = 2 * n * torch.finfo(dtype).bits // 8
    rows = max(1, min(samples, max(_CACHE_ROWS, _CACHE_ELEMENTS // n), budget // per_row))
    res = torch.empty(4, acts.shape[0], dtype=out_dtype, device=batch.device)
    h_y = torch.empty(acts.shape[0], dtype=out_dtype, device=batch.device)
    for b in range(acts.shape[0]):
        yb = y[b if y.shape[0] > 1 else 0]
        terms = _per_draw_terms(acts[b].to(dtype), yb, idx, z, s2, rows, control_variate)
        tx, ty, vx, vy = terms[0].to(out_dtype), terms[1].to(out_dtype), terms[2], terms[3]
        vx, vy = [v.to(out_dtype) for v in vx], [v.to(out_dtype) for v in vy]
        (res[0, b], res[2, b]), (res[1, b], res[3, b]) = _controlled(tx, vx), _controlled(ty, vy)
        p = torch.bincount(yb).to(out_dtype) / n
        p = p[p > 0]
        h_y[b] = -(p * torch.log2(p)).sum()
    res = res / math.log(2)
    shape = batch.batch_shape
    ixt = res[0].clamp(0.0, math.log2(n))
    ity = torch.minimum(res[1].clamp(min=0.0), h_y)
    return NoisyResult(ixt=ixt.reshape(shape), ity=ity.reshape(shape), ixt_se=res[2].reshape(shape),
                       ity_se=res[3].reshape(shape))
