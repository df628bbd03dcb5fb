"""The information-bottleneck curve of a discrete joint distribution: the best I(T;Y) for each I(X;T).

For a Markov chain T - X - Y with a known ``p(x, y)``, the curve ``max { I(T;Y) : I(X;T) <= r }`` bounds every
representation T of X, a trained layer included: a point of the information plane above it is an estimation
error. :func:`ib_curve` traces it with the iterative information-bottleneck algorithm (Tishby, Pereira & Bialek
1999): for a trade-off ``beta``, the encoder that minimises ``I(X;T) - beta I(T;Y)`` satisfies

    q(t|x) = q(t) exp(-beta KL[p(y|x) || q(y|t)]) / Z(x, beta)

and alternating this with ``q(t) = sum_x p(x) q(t|x)`` and ``q(y|t) = sum_x q(t|x) p(x, y) / q(t)`` converges to a
stationary point. ``beta`` is annealed from small to large, each run starting from the previous encoder with a small
seeded perturbation (so that clusters can split), which follows the curve from (0, 0) up to I(T;Y) = I(X;Y).

What the points are: each is the (I(X;T), I(T;Y)) of an encoder the algorithm found, so each lies on or below the
true curve; points that another point dominates (more I(T;Y) for no more I(X;T)) are dropped. Where the true curve
is straight (a deterministic Y gives ``min(I(X;T), H(Y))``), the Lagrangian reaches only its ends, and the curve
between two returned points is the straight segment joining them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY = 1e-300


@dataclass
class IBCurve:
    """Points of the information-bottleneck curve, in bits, sorted by increasing ``ixt``.

    Attributes
    ----------
    ixt, ity : numpy.ndarray of float64, shape [P]
        I(X;T) (increasing) and I(T;Y) (non-decreasing) of each point, bits.
    beta : numpy.ndarray, shape [P]
        The trade-off at which each point was found (0 for the trivial encoder at the origin).
    h_y, i_xy : float
        H(Y) and I(X;Y) in bits: the curve's ceiling, reached as ``ixt`` grows.
    converged : numpy.ndarray of bool, shape [P]
        Whether each point's iteration met the tolerance within the iteration cap (near a beta where the
        encoder splits a cluster, convergence slows down sharply; such a point is still a valid encoder's point,
        on or below the curve).
    """

    ixt: np.ndarray
    ity: np.ndarray
    beta: np.ndarray
    h_y: float
    i_xy: float
    converged: np.ndarray


def _check_joint(p_xy: object, atol: float) -> np.ndarray:
    p = np.asarray(p_xy, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"p_xy must be a 2-d array p_xy[x, y] (a joint distribution); got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("p_xy must hold finite, non-negative probabilities")
    total = float(p.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"p_xy must sum to 1 (a joint distribution); it sums to {total!r}. Divide by its sum if it "
                         f"holds counts or unnormalised weights")
    return p / total


def _entropy_bits(p: np.ndarray) -> float:
    q = p[p > 0]
    return float(-(q * np.log2(q)).sum())


def _informations(enc: np.ndarray, p_x: np.ndarray, p_xy: np.ndarray, p_y: np.ndarray) -> tuple[float, float]:
    q_t = p_x @ enc
    joint_xt = p_x[:, None] * enc
    nz = joint_xt > 0
    ixt = float((joint_xt[nz] * np.log2(enc[nz] / np.broadcast_to(q_t, enc.shape)[nz])).sum())
    joint_ty = enc.T @ p_xy
    outer = q_t[:, None] * p_y[None, :]
    nz = joint_ty > 0
    ity = float((joint_ty[nz] * np.log2(joint_ty[nz] / outer[nz])).sum())
    return max(ixt, 0.0), max(ity, 0.0)


def _iterate(enc: np.ndarray, beta: float, p_x: np.ndarray, p_y_x: np.ndarray, p_xy: np.ndarray,
             log_p_y_x: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, bool]:
    for _ in range(max_iter):
        q_t = p_x @ enc
        q_y_t = (enc.T @ p_xy) / np.maximum(q_t, _TINY)[:, None]
        # KL[p(y|x) || q(y|t)] for every (x, t), in nats; 0 log 0 = 0
        kl = (p_y_x * log_p_y_x).sum(1)[:, None] - p_y_x @ np.log(np.maximum(q_y_t, _TINY)).T
        logits = np.log(np.maximum(q_t, _TINY))[None, :] - beta * kl
        logits -= logits.max(1, keepdims=True)
        new = np.exp(logits)
        new /= new.sum(1, keepdims=True)
        change = float(np.abs(new - enc).max())
        enc = new
        if change < tol:
            return enc, True
    return enc, False


def ib_curve(p_xy: object, *, n_t: int | None = None, betas: object = None, tol: float = 1e-10,
             max_iter: int = 5000, seed: int = 0, atol: float = 1e-9) -> IBCurve:
    """The information-bottleneck curve of a discrete joint distribution, by the annealed iterative IB algorithm.

    Parameters
    ----------
    p_xy : array-like, shape [|X|, |Y|]
        The joint distribution ``p(x, y)``; must sum to 1 (within ``atol``).
    n_t : int, optional
        Cardinality of T; default ``|X|``, which reaches every point of the curve (T = X is the finest encoder).
    betas : array-like of positive floats, optional
        The trade-offs, annealed in increasing order; default 400 values log-spaced from 0.01 to 10**4.
    tol : float, default 1e-10
        Stop a beta's iteration when no entry of the encoder ``q(t|x)`` changes by more than this.
    max_iter : int, default 5000
        Iteration cap per beta.
    seed : int, default 0
        Seed of the initial encoder and of the perturbations that let clusters split.
    atol : float, default 1e-9
        Tolerance on ``sum(p_xy) == 1``.

    Returns
    -------
    IBCurve
        ``ixt`` (increasing) and ``ity`` in bits, the ``beta`` and ``converged`` flag of each point, ``h_y``, ``i_xy``.

    Examples
    --------
    >>> p = np.array([[0.45, 0.05], [0.05, 0.45]])       # a binary symmetric channel, flip probability 0.1
    >>> c = ib_curve(p, betas=np.geomspace(0.1, 100, 60))
    >>> bool(np.all(np.diff(c.ixt) > 0)), round(c.i_xy, 4), round(float(c.ity.max()), 3)
    (True, 0.531, 0.531)
    """
    p = _check_joint(p_xy, atol)
    p = p[p.sum(1) > 0]  # values of X that never occur carry nothing
    p_x = p.sum(1)
    p_y = p.sum(0)
    p_y_x = p / p_x[:, None]
    log_p_y_x = np.log(np.where(p_y_x > 0, p_y_x, 1.0))
    n_x = p.shape[0]
    if n_t is None:
        n_t = n_x
    if isinstance(n_t, bool) or not isinstance(n_t, (int, np.integer)) or n_t < 1:
        raise ValueError(f"n_t must be a positive integer (the cardinality of T); got {n_t!r}")
    if betas is None:
        betas = np.geomspace(1e-2, 1e4, 400)
    b = np.asarray(betas, dtype=np.float64).ravel()
    if b.size == 0 or not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError("betas must be a non-empty list of positive, finite trade-offs")
    b = np.sort(b)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol!r}")

    rng = np.random.default_rng(seed)
    enc = rng.random((n_x, n_t)) + 1.0
    enc /= enc.sum(1, keepdims=True)
    points = [(0.0, 0.0, 0.0, True)]
    for beta in b:
        start = enc * (1.0 + 1e-3 * rng.standard_normal(enc.shape))  # lets a cluster split as beta grows
        start = np.abs(start)
        start /= start.sum(1, keepdims=True)
        enc, ok = _iterate(start, float(beta), p_x, p_y_x, p, log_p_y_x, tol, max_iter)
        ixt, ity = _informations(enc, p_x, p, p_y)
        points.append((ixt, ity, float(beta), ok))

    pts = sorted(points, key=lambda t: (t[0], -t[1]))
    front: list[tuple[float, float, float, bool]] = []
    for point in pts:  # keep the points no other point dominates
        if front and point[1] <= front[-1][1] + 1e-12:
            continue
        if front and point[0] <= front[-1][0] + 1e-12:
            front[-1] = point
            continue
        front.append(point)
    arr = np.array([f[:3] for f in front])
    h_y = _entropy_bits(p_y)
    i_xy = _entropy_bits(p_x) + h_y - _entropy_bits(p.ravel())
    return IBCurve(ixt=arr[:, 0], ity=arr[:, 1], beta=arr[:, 2], h_y=h_y, i_xy=max(i_xy, 0.0),
                   converged=np.array([f[3] for f in front], dtype=bool))


#: Growth along a chain below this many bits is floating-point rounding, not a violation: two layers that hold the
#: same information get estimates that differ in the last bits (entropies summed over different count tables).
ROUNDING_BITS = 1e-9


@dataclass
class ChainCheck:
    """Where a feed-forward chain's estimates break the data-processing inequality.

    Attributes
    ----------
    violations : numpy.ndarray of bool, shape [..., L - 1]
        ``violations[..., k]``: layer k + 1 holds more than layer k by more than the tolerance (plus
        :data:`ROUNDING_BITS`).
    excess : numpy.ndarray of float64, shape [..., L - 1]
        ``values[..., k + 1] - values[..., k]`` where that is positive, else 0 (bits).
    count : int
        Number of violations.
    """

    violations: np.ndarray
    excess: np.ndarray
    count: int


def chain_check(values: object, *, tol: float = 0.0) -> ChainCheck:
    """Check the data-processing inequality along a feed-forward chain of layers.

    In a chain X -> T_1 -> T_2 -> ... (each layer computed from the previous one only), I(X;T_1) >= I(X;T_2) >= ...
    and I(T_1;Y) >= I(T_2;Y) >= ...; an estimate that grows along the chain by more than its error is wrong.
    Networks with skip connections are not chains: the inequality does not apply to them.

    Parameters
    ----------
    values : array-like, shape [..., L]
        One quantity (I(X;T) or I(T;Y), bits) per layer in the order of the chain; leading dimensions (seeds,
        epochs) are checked independently. NaN (not estimated) never counts as a violation.
    tol : float, default 0.0
        The estimator's stated error (bits): growth up to ``tol`` is not a violation. Growth up to
        :data:`ROUNDING_BITS` (floating-point rounding of equal values) never is.

    Returns
    -------
    ChainCheck
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim < 1 or v.shape[-1] < 2:
        raise ValueError(f"values must have the layers on the last axis, at least two of them; got shape {v.shape}")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0 (bits); got {tol!r}")
    growth = np.diff(v, axis=-1)
    with np.errstate(invalid="ignore"):
        violations = np.nan_to_num(growth, nan=-np.inf) > tol + ROUNDING_BITS
    excess = np.where(np.nan_to_num(growth, nan=0.0) > 0, np.nan_to_num(growth, nan=0.0), 0.0)
    return ChainCheck(violations=violations, excess=excess, count=int(violations.sum()))


def label_joint(labels: object, *, flip: float = 0.0, n_classes: int | None = None) -> np.ndarray:
    """The joint distribution p(x, y) of a data set whose samples are equally likely and whose labels pass through
    a symmetric channel: each label is kept with probability ``1 - flip``, else replaced by one of the other
    classes, uniformly.

    The information-bottleneck curve depends on X only through p(y|x): samples with the same conditional are
    merged into one value of X (exactly: every encoder of X has one of the merged X that is as good), so a data set
    of any size gives a small ``p_xy``. With ``flip=0`` and two classes it is the 2 x 2 diagonal; the curve of the
    merged X ends at I(X;Y) and continues flat beyond it, as the curve of the full X does.

    Parameters
    ----------
    labels : array-like of int, shape [N]
        Class index of each sample (e.g. the 12-bit task's labels).
    flip : float in [0, 1], default 0.0
        Probability that a label is replaced by another class.
    n_classes : int, optional
        Number of classes; default the largest label + 1.

    Returns
    -------
    numpy.ndarray, shape [n_merged, n_classes]
        ``p_xy[x, y]``, summing to 1; pass it to :func:`ib_curve`.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError("labels must be a non-empty 1-d array of class indices >= 0")
    if isinstance(flip, bool) or not isinstance(flip, (int, float)) or not 0.0 <= float(flip) <= 1.0:
        raise ValueError(f"flip must be a probability in [0, 1]; got {flip!r}")
    c = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if c < 2 or c <= int(y.max()):
        raise ValueError(f"n_classes must be at least 2 and exceed every label; got {n_classes!r} for labels up to "
                         f"{int(y.max())}")
    counts = np.bincount(y, minlength=c).astype(np.float64)
    rows = []
    for k in np.nonzero(counts)[0]:  # one merged x per label: its samples share p(y|x)
        cond = np.full(c, float(flip) / (c - 1))
        cond[k] = 1.0 - float(flip)
        rows.append(counts[k] / y.size * cond)
    return np.array(rows)
