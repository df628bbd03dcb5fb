"""Which sharpness measures a tracker records, on which data, and measuring them at a recorded epoch.

The measures are those of :mod:`infoplane.sharpness`, named by their function names. Each is computed on a fixed
subset of the training data, drawn once when the tracker is made (``samples`` rows, without replacement, from a
generator seeded with ``subset_seed``) and recorded in ``meta.json``; a measure's own random vectors are seeded
with the model's seed, so the numbers of a run are reproducible. The measures leave the model exactly as they
found it (parameters, buffers, gradients, modes and torch's global RNG), so training goes on bit for bit as it
would without them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from infoplane import sharpness as measures_mod
from infoplane._validate import check_float, check_int
from infoplane.runs.format import SharpnessRow
from infoplane.sharpness import ensemble

__all__ = ["MEASURES", "DEFAULT_OPTIONS", "SharpnessPlan", "as_measures", "subset_indices"]

#: The measures a tracker can record, by name.
MEASURES: dict[str, Callable[..., Any]] = {
    "hessian_top_eigenvalue": measures_mod.hessian_top_eigenvalue,
    "hessian_trace": measures_mod.hessian_trace,
    "sam_sharpness": measures_mod.sam_sharpness,
    "adaptive_sharpness": measures_mod.adaptive_sharpness,
    "random_sharpness": measures_mod.random_sharpness,
}
#: Options used where the caller gives none: the radii of Foret et al. (SAM, 0.05) and Kwon et al. (ASAM, 0.5).
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "sam_sharpness": {"rho": 0.05},
    "adaptive_sharpness": {"rho": 0.5},
    "random_sharpness": {"rho": 0.05},
}
_SEEDED = "seed"  # set per model from its seed; not an option of the tracker


def _options_of(name: str) -> list[str]:
    params = inspect.signature(MEASURES[name]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != _SEEDED]


def as_measures(spec: Any, rho: Optional[float] = None) -> dict[str, dict[str, Any]]:
    """The measures to record and their options, checked.

    Parameters
    ----------
    spec : str, list of str, or dict
        A measure name, several (a list, or one string separated by commas), or a dict mapping names to their
        options (``{"sam_sharpness": {"rho": 0.1, "steps": 10}}``; None or ``{}`` for the defaults).
    rho : float, optional
        The radius for every measure that takes one and is not given its own.

    Returns
    -------
    dict
        ``name -> options`` (JSON-able; defaults filled in), in the order given.

    Raises
    ------
    ValueError
        An unknown measure or option, or a bad value (``rho <= 0``, ``steps < 1``, ...).
    """
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        items = [(name, None) for name in spec]
    else:
        raise TypeError(f"sharpness must be a measure name, a list of names or a dict name -> options; got "
                        f"{type(spec).__name__}")
    if not items:
        raise ValueError(f"sharpness names no measure; give one or more of {sorted(MEASURES)}")
    if rho is not None:
        rho = check_float(rho, "rho", positive=True, what="> 0 (the radius of the perturbations)")
    out: dict[str, dict[str, Any]] = {}
    for name, options in items:
        if name not in MEASURES:
            raise ValueError(f"unknown sharpness measure {name!r}; known: {', '.join(sorted(MEASURES))}")
        if name in out:
            raise ValueError(f"sharpness measure {name!r} is given twice")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise TypeError(f"the options of sharpness measure {name!r} must be a dict; got {type(options).__name__}")
        allowed = _options_of(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            extra = " (a measure's random vectors are seeded with the model's seed)" if _SEEDED in unknown else ""
            raise ValueError(f"sharpness measure {name!r} has no option(s) {unknown}{extra}; its options: {allowed}")
        merged = {**DEFAULT_OPTIONS.get(name, {}), **({"rho": rho} if rho is not None and "rho" in allowed else {}),
                  **options}
        _check_options(name, merged)
        out[name] = merged
    return out


def _check_options(name: str, options: dict[str, Any]) -> None:
    """Bad values fail here, when the tracker is made, with the measure's own wording."""
    for key, value in options.items():
        where = f"{key} of sharpness measure {name!r}"
        if key == "rho":
            options[key] = check_float(value, where, positive=True, what="> 0 (the radius of the perturbations)")
        elif key in ("tol",):
            options[key] = check_float(value, where, positive=True, what="> 0")
        elif key == "eta":
            options[key] = check_float(value, where, minimum=0.0, what=">= 0")
        elif key in ("max_iter", "steps", "batch_size"):
            options[key] = check_int(value, where, minimum=1)
        elif key == "samples":
            options[key] = check_int(value, where, minimum=2)


def subset_indices(n: int, samples: Optional[int], seed: int) -> np.ndarray:
    """The rows of an ``n``-row data set that the measures use: ``samples`` of them drawn without replacement by a
    generator seeded with ``seed``, sorted; every row when ``samples`` is None or at least ``n``.

    Parameters
    ----------
    n : int
        Rows of the data.
    samples : int or None
        How many to use.
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray of int64
    """
    if samples is None or samples >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=samples, replace=False)).astype(np.int64)


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _take(data: Any, idx: np.ndarray, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{what} must be a pair (x, y) of tensors or arrays with the same first dimension")
    x, y = _as_tensor(data[0]), _as_tensor(data[1])
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise ValueError(f"{what}: x and y must have the same first dimension; got shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")
    at = torch.as_tensor(idx)
    return x[at], y[at]


@dataclass
class SharpnessPlan:
    """What a tracker measures at each recorded epoch: the measures and, per model, its data subset.

    Attributes
    ----------
    measures : dict
        ``name -> options``, as :func:`as_measures` returns.
    data : list of (tensor, tensor)
        Per model, the subset ``(x, y)`` its loss is evaluated on.
    indices : list of ndarray
        Per model, the rows of its ``sharpness_data`` that form the subset.
    loss_fn : callable
        ``loss_fn(outputs, y)`` returning the batch mean.
    samples : int or None
        Requested subset size.
    subset_seed : int
    how : dict
        Per measure, after :meth:`measure`: ``"batched"`` or why the models were measured one at a time.
    """

    measures: dict[str, dict[str, Any]]
    data: list[tuple[torch.Tensor, torch.Tensor]]
    indices: list[np.ndarray]
    loss_fn: Callable[[Any, Any], torch.Tensor]
    samples: Optional[int]
    subset_seed: int
    how: dict = field(default_factory=dict)

    @classmethod
    def make(cls, spec: Any, models: Sequence[nn.Module], data: Any, loss_fn: Optional[Callable], *,
             samples: Optional[int], subset_seed: int, rho: Optional[float] = None) -> "SharpnessPlan":
        """Check the request and draw the subsets.

        Parameters
        ----------
        spec, rho
            As for :func:`as_measures`.
        models : list of nn.Module
            One per seed; each needs trainable parameters.
        data : (x, y) or list of (x, y)
            The training data, shared by the models, or one pair per model.
        loss_fn : callable or None
            Default ``nn.CrossEntropyLoss()``.
        samples : int or None
            Subset size (None: all rows).
        subset_seed : int
            Seed of the subset's draw.
        """
        measures = as_measures(spec, rho)
        if samples is not None:
            samples = check_int(samples, "sharpness_samples", minimum=1)
        subset_seed = check_int(subset_seed, "sharpness_seed", minimum=0)
        if loss_fn is None:
            loss_fn = nn.CrossEntropyLoss()
        if not callable(loss_fn):
            raise TypeError(f"sharpness_loss must be callable as loss(outputs, y); got {type(loss_fn).__name__}")
        for i, m in enumerate(models):
            if not any(p.requires_grad for p in m.parameters()):
                raise ValueError(f"sharpness: model {i} has no trainable parameters (none with requires_grad=True); "
                                 f"sharpness is measured with respect to them")
        if data is None:
            raise ValueError("sharpness needs the training data it is measured on: pass sharpness_data=(x, y)")
        per_model = isinstance(data, list) and len(data) == len(models) and all(
            isinstance(d, (tuple, list)) and len(d) == 2 for d in data) and len(models) > 1
        pairs = list(data) if per_model else [data] * len(models)
        subsets, indices = [], []
        for i, (pair, model) in enumerate(zip(pairs, models)):
            what = f"sharpness_data[{i}]" if per_model else "sharpness_data"
            n = len(_as_tensor(pair[0])) if isinstance(pair, (tuple, list)) and len(pair) == 2 else 0
            idx = subset_indices(n, samples, subset_seed) if n else np.arange(0, dtype=np.int64)
            x, y = _take(pair, idx, what)
            weight = next((p for p in model.parameters() if p.is_floating_point()), None)
            if weight is not None:
                x = x.to(weight.device)
                if x.is_floating_point():
                    x = x.to(weight.dtype)
                y = y.to(weight.device)
            if not y.is_floating_point():
                y = y.long()
            subsets.append((x, y))
            indices.append(idx)
        _check_loss(models[0], loss_fn, *subsets[0])
        return cls(measures, subsets, indices, loss_fn, samples, subset_seed)

    def settings(self) -> dict[str, Any]:
        """What ``meta.json["sharpness"]`` records: the measures' options, the subset's size, seed and rows."""
        shared = all(np.array_equal(i, self.indices[0]) for i in self.indices)
        return {"measures": self.measures, "samples": self.samples, "subset_seed": self.subset_seed,
                "subset": self.indices[0].tolist() if shared else [i.tolist() for i in self.indices],
                "loss": _describe(self.loss_fn)}

    def measure(self, models: Sequence[nn.Module], seeds: Sequence[int], epoch: int) -> list[SharpnessRow]:
        """Every measure of every model at this epoch, as ``sharpness.csv`` lines (model by model, measures in
        order). The measures that can run all models at once do (see :func:`infoplane.sharpness.ensemble`);
        :attr:`how` says, per measure, whether they did or why not."""
        if len(models) != len(self.data) or len(seeds) != len(self.data):
            raise ValueError(f"this plan measures {len(self.data)} model(s); got {len(models)} model(s) and "
                             f"{len(seeds)} seed(s)")
        xs, ys = [x for x, _ in self.data], [y for _, y in self.data]
        by_measure = {}
        for name, options in self.measures.items():
            results, self.how[name] = ensemble(models, self.loss_fn, xs, ys, name, seeds=[int(s) for s in seeds],
                                               **options)
            by_measure[name] = results
        return [_row(int(seed), int(epoch), name, by_measure[name][i])
                for i, seed in enumerate(seeds) for name in self.measures]


def _check_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
    """The loss on two rows must be a scalar: checked once, in eval mode, without gradients and with torch's RNG
    forked, so that the model and training are untouched."""
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            try:
                value = loss_fn(model(x[:2]), y[:2])
            except Exception as err:  # noqa: BLE001 - any failure here means the data or loss do not fit
                raise ValueError(f"sharpness: the loss of the model on sharpness_data failed "
                                 f"({type(err).__name__}: {err}); give training data (x, y) that the model and "
                                 f"sharpness_loss accept") from err
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"sharpness_loss must return a scalar (the loss averaged over the batch); it returned "
                         f"{shape}. Use a mean reduction, e.g. nn.CrossEntropyLoss(reduction='mean')")


def _describe(loss_fn: Any) -> str:
    return repr(loss_fn) if isinstance(loss_fn, nn.Module) else getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _row(seed: int, epoch: int, name: str, result: Any) -> SharpnessRow:
    get = lambda key: getattr(result, key, None)  # noqa: E731
    return SharpnessRow(seed=seed, epoch=epoch, measure=name, value=float(result.value), loss=get("loss"),
                        rho=get("rho"), one_step=get("one_step"), stderr=get("stderr"), samples=get("samples"),
                        iterations=get("iterations"), evaluations=get("evaluations"), converged=get("converged"))

