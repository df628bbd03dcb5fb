"""Mutual information of jointly Gaussian variables, from their sample covariances.

For jointly Gaussian ``a`` (``d_a`` dimensions) and ``b`` (``d_b``) with covariance ``C = [[C_aa, C_ab], [C_ba,
C_bb]]``,

    I(a; b) = 1/2 * log2( det C_aa * det C_bb / det C )        (bits)

:func:`gaussian_mi` puts the sample covariances into this formula. It is exact for Gaussian data up to the
sampling error of the covariances (a relative error of order d / N), and it is the right measure for linear
networks with Gaussian inputs and Gaussian noise in their layers, where every layer is jointly Gaussian with the
input. On a nonlinear layer it measures only the linear (second-order) dependence: a lower bound for Gaussian
inputs, and not a mutual information of the network at all otherwise.

A deterministic linear relation (a layer without noise, or more units than independent directions) makes ``C``
singular, and the mutual information of continuous variables infinite: that is refused with an error rather than
returned as a large number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from infoplane.estimators._inputs import Batch, as_batch, check_finite, result_dtype

_LN2 = math.log(2)


@dataclass
class GaussianResult:
    """Result of :func:`gaussian_mi`: ``mi`` in bits, shape of the broadcast batch dimensions."""

    mi: torch.Tensor


def _items(a: Batch, b: Batch) -> tuple[int, tuple]:
    if a.n != b.n:
        raise ValueError(f"gaussian_mi: a has N = {a.n} samples and b has N = {b.n}; they must be paired sample by "
                         f"sample ([..., N, d_a] and [..., N, d_b])")
    if a.acts.shape[0] == 1:
        return b.acts.shape[0], b.batch_shape
    if b.acts.shape[0] == 1 or a.batch_shape == b.batch_shape:
        return a.acts.shape[0], a.batch_shape
    raise ValueError(f"gaussian_mi: the batch dimensions of a {a.batch_shape} and b {b.batch_shape} differ; give "
                     f"both the same leading dimensions, or give one of them none")


# A covariance counts as singular when its correlation matrix has an eigenvalue this small (relative to 1): the
# smallest eigenvalue of an exactly singular matrix comes out at rounding level, not at 0, and a Cholesky factor
# can succeed on it.
_SINGULAR = {torch.float64: 1e-10, torch.float32: 1e-5}


def _logdet_pd(c: torch.Tensor, what: str, item: int) -> torch.Tensor:
    var = torch.diagonal(c)
    ev = None
    if bool((var > 0).all()):
        scale = torch.sqrt(var)
        ev = torch.linalg.eigvalsh(c / (scale[:, None] * scale[None, :]))
    if ev is None or float(ev.min()) <= _SINGULAR.get(c.dtype, 1e-5) * c.shape[0]:
        raise ValueError(
            f"gaussian_mi: the sample covariance of {what} (batch item {item}) is singular: some direction is, to "
            f"rounding, a fixed linear function of the others. The mutual information of continuous variables is "
            f"then infinite. Typical causes: a layer without noise (add Gaussian noise inside the network with "
            f"infoplane.add_noise), more units than independent directions (reduce the layer, e.g. reduce='pca:k'), "
            f"constant units, or fewer samples than dimensions (N must exceed d_a + d_b).")
    return torch.log(var).sum() + torch.log(ev).sum()


def gaussian_mi(a: torch.Tensor, b: torch.Tensor) -> GaussianResult:
    """Mutual information of two jointly Gaussian variables from their sample covariances, in bits.

    Parameters
    ----------
    a : torch.Tensor or numpy.ndarray, shape [..., N, d_a]
        Samples of the first variable (e.g. the inputs X). Leading dimensions are a batch; give none to share it
        across ``b``'s batch.
    b : torch.Tensor or numpy.ndarray, shape [..., N, d_b]
        Samples of the second variable (e.g. a layer T), paired with ``a`` sample by sample.

    Returns
    -------
    GaussianResult
        ``mi``: ``1/2 log2(det C_aa det C_bb / det C)`` with the sample covariances (denominator N - 1), in bits,
        float64 (float32 on MPS), shape of the broadcast batch dimensions, on ``b``'s device. Never negative
        (rounding below 0 is clamped to 0); there is no upper ceiling.

    Raises
    ------
    ValueError
        When a covariance is singular (a deterministic relation: the information is infinite), when N does not
        exceed ``d_a + d_b``, or for inputs that are not finite.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    >>> y = 0.6 * x + 0.8 * torch.randn(20000, 1, generator=g, dtype=torch.float64)   # correlation 0.6
    >>> round(float(gaussian_mi(x, y).mi), 2), round(-0.5 * math.log2(1 - 0.36), 2)
    (0.32, 0.32)
    """
    ba, bb = as_batch(a), as_batch(b)
    n_items, shape = _items(ba, bb)
    check_finite(ba.acts, ba)
    check_finite(bb.acts, bb)
    n, da, db = ba.n, ba.acts.shape[-1], bb.acts.shape[-1]
    if n <= da + db:
        raise ValueError(f"gaussian_mi needs more samples than dimensions: N = {n}, d_a + d_b = {da + db}; the joint "
                         f"sample covariance is singular otherwise")
    device = bb.device
    dt = result_dtype(device)
    out = torch.empty(n_items, dtype=torch.float64 if dt == torch.float64 else dt, device=device)
    for i in range(n_items):
        xa = ba.acts[0 if ba.acts.shape[0] == 1 else i].to(device=device, dtype=dt)
        xb = bb.acts[0 if bb.acts.shape[0] == 1 else i].to(dtype=dt)
        joint = torch.cat([xa - xa.mean(0), xb - xb.mean(0)], dim=1)
        cov = joint.T @ joint / (n - 1)
        ld_a = _logdet_pd(cov[:da, :da], "a", i)
        ld_b = _logdet_pd(cov[da:, da:], "b", i)
        ld = _logdet_pd(cov, "a and b together", i)
        out[i] = torch.clamp((ld_a + ld_b - ld) / (2 * _LN2), min=0.0)
    return GaussianResult(mi=out.reshape(shape))
