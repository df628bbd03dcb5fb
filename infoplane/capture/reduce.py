"""Layer reductions: fewer, more meaningful columns for wide and convolutional layers before estimating.

A reduction turns one layer's activations ``[..., N, D]`` (flattened per sample, per-sample shape ``shape``,
D = prod(shape)) into ``[..., N, k]``. Specs:

``"flatten"``
    Every unit as its own column (the default, and what the tracker did before reductions existed).
``"channel-mean"``
    Global average per channel of a ``[N, C, *spatial]`` output: C columns. A layer with a 1-D output per
    sample (``[N, C]``) is left as it is.
``"pca:k"``
    Scores on the k leading principal components of the layer, **fitted separately for every layer and every
    batch item (epoch)** on that item's own centred activations. An online tracker cannot fit once on a later
    reference epoch, and a fit on the first epoch (the random initialisation) would follow directions training
    abandons; a per-epoch fit keeps each epoch's reduction a deterministic function of that epoch alone.
    Reproducible: the eigen-decomposition is deterministic and each component's sign is fixed (its largest
    score is positive). The subspace rotates between epochs: rotation-invariant estimators (KDE, noisy) do not
    see the rotation itself, axis-aligned binning does.
``"random:k"`` or ``"random:k:seed"``
    A fixed Gaussian projection with entries N(0, 1/k) (squared distances kept on average, so a noise
    variance means the same before and after), drawn from a local generator seeded by ``seed`` (default 0) and
    the layer's name: the same matrix for every epoch of a layer, different matrices for different layers.

With a noisy network (:func:`infoplane.add_noise`, noise std per unit) the noise follows the reduction:
``pca:k`` is an orthonormal projection and keeps noise variance std^2; ``channel-mean`` over H x W positions
leaves std^2 / (H W); ``random:k`` makes it anisotropic (std^2 R^T R).

One spec string applies to every layer (``pca:k`` and ``random:k`` then leave layers of at most k units as
they are). A dict maps layer names or glob patterns to specs (``{"conv*": "channel-mean", "fc1": "pca:8"}``);
layers that match no key are flattened. :func:`reduce_activations` is the pure function; :func:`resolve` checks a spec
against a model's layers once.
"""
from __future__ import annotations

import fnmatch
import math
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

__all__ = ["Reduction", "parse", "reduce_activations", "resolve", "spec_to_json"]

_KINDS = ("flatten", "channel-mean", "pca", "random")
_HELP = "expected 'flatten', 'channel-mean', 'pca:K' or 'random:K' (or 'random:K:SEED') with K a positive integer"


@dataclass(frozen=True)
class Reduction:
    """A parsed reduction spec (see the module docstring)."""

    kind: str
    k: int | None = None
    seed: int = 0

    @property
    def spec(self) -> str:
        if self.kind in ("flatten", "channel-mean"):
            return self.kind
        if self.kind == "random" and self.seed:
            return f"random:{self.k}:{self.seed}"
        return f"{self.kind}:{self.k}"

    def width(self, shape: Sequence[int]) -> int:
        """Columns produced for a layer whose per-sample output shape is ``shape``."""
        shape = tuple(int(s) for s in shape)
        if self.kind == "flatten":
            return math.prod(shape)
        if self.kind == "channel-mean":
            return shape[0]
        assert self.k is not None  # parse gives pca and random their k
        return self.k

    def noise_variance(self, shape: Sequence[int], variance: float) -> float:
        """Variance per column, after this reduction, of isotropic noise of ``variance`` on every unit.

        Parameters
        ----------
        shape : sequence of int
            Per-sample output shape of the layer, e.g. ``(C, H, W)``.
        variance : float
            Variance of independent noise on each unit before the reduction (squared activation units).

        Returns
        -------
        float
            ``flatten`` and ``pca:k`` (an orthonormal projection) keep it; ``channel-mean`` over ``H x W``
            positions divides it by ``H W`` (a layer of shape ``[C]`` is left as it is).

        Raises
        ------
        ValueError
            For ``random:k``: the projected noise has covariance ``variance R^T R``, not a multiple of the
            identity, so no single variance describes it.
        """
        shape = tuple(int(s) for s in shape)
        if self.kind in ("flatten", "pca"):
            return float(variance)
        if self.kind == "channel-mean":
            return float(variance) / (math.prod(shape[1:]) if len(shape) > 1 else 1)
        raise ValueError(f"{self.spec!r} turns isotropic noise into noise of covariance std^2 R^T R, which no single "
                         f"variance describes; use pca:K or channel-mean with a noisy network")


def parse(spec: Union[str, Reduction]) -> Reduction:
    """Parse one spec string (or pass a :class:`Reduction` through); raises ``ValueError`` naming the problem."""
    if isinstance(spec, Reduction):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a reduction spec must be a string; got {spec!r}. {_HELP}")
    text = spec.strip().lower()
    if text in ("flatten", "channel-mean"):
        return Reduction(text)
    parts = text.split(":")
    if parts[0] not in ("pca", "random"):
        raise ValueError(f"unknown reduction {spec!r}: {_HELP}")
    if len(parts) < 2 or len(parts) > (3 if parts[0] == "random" else 2):
        raise ValueError(f"malformed reduction {spec!r}: {_HELP}")
    try:
        k = int(parts[1])
        seed = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise ValueError(f"malformed reduction {spec!r}: K (and SEED) must be integers; {_HELP}") from None
    if k < 1:
        raise ValueError(f"reduction {spec!r}: K must be at least 1")
    return Reduction(parts[0], k, seed)


def spec_to_json(spec: Union[str, dict, Reduction, None]) -> Union[str, dict, None]:
    """The spec in canonical JSON form (a string, a dict of strings, or None)."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return {str(k): parse(v).spec for k, v in spec.items()}
    return parse(spec).spec


def resolve(spec: Union[str, dict, Reduction, None], layers: Sequence[tuple[str, Optional[Sequence[int]]]]) -> dict:
    """Check a spec (string, dict or None) against the layers and return ``{layer name: Reduction}``.

    Parameters
    ----------
    spec : None, str or dict
        None or ``"flatten"``: every layer flattened. One string: that reduction for every layer, except that
        ``pca:k`` / ``random:k`` leave layers of at most k units as they are. A dict maps exact names or glob
        patterns to specs; the first matching key (in the dict's order) wins; a key that matches no layer, or
        a k larger than the layer it names, is an error.
    layers : list of (name, shape)
        Recorded layers and their per-sample output shapes.

    Returns
    -------
    dict
    """
    names = [name for name, _ in layers]
    if spec is None:
        plan = {name: Reduction("flatten") for name in names}
    elif isinstance(spec, dict):
        if not spec:
            raise ValueError("reduce={} is empty: pass None to flatten every layer, or map layer names to specs")
        parsed = {}
        for key, value in spec.items():
            if not isinstance(key, str):
                raise ValueError(f"reduce= keys must be layer names or glob patterns; got {key!r}")
            hits = [n for n in names if n == key or fnmatch.fnmatchcase(n, key)]
            if not hits:
                raise ValueError(f"reduce= key {key!r} matches no recorded layer; layers: {names}")
            parsed[key] = (hits, parse(value))
        plan = {}
        for name in names:
            plan[name] = next((r for hits, r in parsed.values() if name in hits), Reduction("flatten"))
    else:
        r = parse(spec)
        plan = {name: r for name in names}
    for name, shape in layers:
        r = plan[name]
        if not isinstance(spec, dict) and r.kind in ("pca", "random") and shape is not None and r.k is not None \
                and math.prod(shape) <= r.k:
            # One spec for all layers: layers already this narrow are kept as they are.
            plan[name] = r = Reduction("flatten")
        if shape is None:
            if r.kind == "channel-mean":
                raise ValueError(f"layer {name!r}: channel-mean needs the layer's per-sample shape, which this "
                                 f"run did not record; record the run again with this version of infoplane")
            continue
        width = math.prod(shape)
        if r.kind in ("pca", "random") and r.k is not None and r.k > width:
            raise ValueError(f"layer {name!r} has {width} units, fewer than {r.spec!r} asks for; use K <= {width}")
    return plan


def _projection(d: int, k: int, seed: int, layer: str) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    # The layer name enters the seed so that layers get independent matrices, each fixed across epochs.
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(layer.encode())) % 2**63)
    return torch.randn(d, k, generator=g, dtype=torch.float64) / math.sqrt(k)


def _pca_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """Scores of each item's centred rows on its k leading principal components; x is [B, N, D] float64."""
    x = x - x.mean(dim=-2, keepdim=True)
    n, d = x.shape[-2], x.shape[-1]
    if d <= n:
        # Covariance route: eigenvectors of X^T X (D x D).
        _, vecs = torch.linalg.eigh(x.transpose(-1, -2) @ x)
        scores = x @ vecs[..., :, -k:].flip(-1)
    else:
        # Gram route: eigenvectors of X X^T (N x N) times the singular values give the same scores.
        vals, vecs = torch.linalg.eigh(x @ x.transpose(-1, -2))
        scores = vecs[..., :, -k:].flip(-1) * vals[..., None, -k:].flip(-1).clamp(min=0).sqrt()
    # Fix each component's sign (eigenvectors are defined up to sign): its largest-magnitude score is positive.
    at = scores.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(scores.gather(-2, at))
    sign[sign == 0] = 1
    return scores * sign


def reduce_activations(activations: torch.Tensor, spec: Union[str, Reduction] = "flatten", *,
                       shape: Optional[Sequence[int]] = None, layer: str = "",
                       seed: Optional[int] = None) -> torch.Tensor:
    """Apply a reduction to one layer's activations.

    Parameters
    ----------
    activations : torch.Tensor or numpy.ndarray
        ``[..., N, D]`` flattened per sample (give ``shape``), or ``[N, *shape]`` with one sample axis first
        (``shape`` then defaults to ``activations.shape[1:]``), or ``[..., N, *shape]``.
    spec : str or Reduction, default "flatten"
        See the module docstring.
    shape : tuple of int, optional
        Per-sample output shape of the layer, e.g. ``(C, H, W)``.
    layer : str
        Layer name; seeds ``random:k`` (with the spec's seed) so that each layer has its own fixed matrix.
    seed : int, optional
        Overrides the spec's seed for ``random:k``.

    Returns
    -------
    torch.Tensor
        ``[..., N, k]`` on the input's device: float64 for ``pca``/``random``, the input dtype otherwise.
    """
    r = parse(spec)
    x = activations if isinstance(activations, torch.Tensor) else torch.as_tensor(activations)
    if shape is None:
        if x.ndim < 2:
            raise ValueError(f"activations must be [N, ...] (samples first); got shape {tuple(x.shape)}")
        shape = tuple(x.shape[1:])
        lead = (x.shape[0],)
    else:
        shape = tuple(int(s) for s in shape)
        d = math.prod(shape)
        if tuple(x.shape[-len(shape):]) == shape and x.ndim > len(shape):
            lead = tuple(x.shape[:-len(shape)])
        elif x.ndim >= 2 and x.shape[-1] == d:
            lead = tuple(x.shape[:-1])
        else:
            raise ValueError(f"activations of shape {tuple(x.shape)} do not hold samples of shape {shape} "
                             f"(flattened: {d} units per sample)")
    d = math.prod(shape)
    flat = x.reshape(*lead, d)
    if r.kind == "flatten":
        return flat
    if r.kind == "channel-mean":
        if len(shape) == 1:
            return flat
        return x.reshape(*lead, shape[0], -1).mean(dim=-1)
    assert r.k is not None  # parse gives pca and random their k
    if r.k > d:
        raise ValueError(f"{r.spec!r} asks for {r.k} columns but the layer has {d} units; use K <= {d}")
    if r.kind == "random":
        m = _projection(d, r.k, r.seed if seed is None else seed, layer).to(flat.device)
        return flat.to(torch.float64) @ m
    if len(lead) < 1 or lead[-1] < 2:
        raise ValueError("pca needs at least 2 samples per item")
    items = flat.reshape(-1, lead[-1], d).to(torch.float64)
    return _pca_scores(items, r.k).reshape(*lead, r.k)
