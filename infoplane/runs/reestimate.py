"""Estimate a recorded run again, from its saved activations, without retraining: :func:`estimate`."""
from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
import torch

from infoplane.capture import reduce as reduce_mod
from infoplane.capture.hooks import Layer
from infoplane.runs.format import ACTIVATIONS, METRICS, read_meta, read_metrics
from infoplane.runs.reader import Run
from infoplane.runs.writer import RunWriter
from infoplane.tracking.estimators import as_estimators, layer_contexts, layer_settings, per_layer
from infoplane.tracking.recorder import estimate_rows, sort_rows

__all__ = ["estimate"]


def estimate(run_dir: Union[str, os.PathLike], estimators: Any = None, out: Union[str, os.PathLike, None] = None, *,
             buffer_bytes: int = 256 * 2**20, device: Union[str, torch.device, None] = None, overwrite: bool = False,
             reduce: Union[str, dict, None] = None) -> Run:
    """Recompute a run's information plane from its saved activations, without retraining.

    The run must have been recorded with ``keep_activations=True``.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The recorded run.
    estimators : list, optional
        Estimator objects or ``settings()`` dicts; default: the run's own.
    out : str, os.PathLike or None
        New run directory for the result (``meta.json``, ``infoplane.csv``, a copy of ``metrics.csv``); None
        returns the result in memory only.
    buffer_bytes : int, default 256 MiB
        Most activation memory passed to one estimator call.
    device : str or torch.device, optional
        Where to estimate (default CPU).
    overwrite : bool, default False
        Replace a run already in ``out``.
    reduce : None, str or dict
        Layer reduction (see :class:`~infoplane.Tracker`); default: the run's own (``"flatten"`` undoes it).

    Returns
    -------
    Run
    """
    run_dir = os.fspath(run_dir)
    meta = read_meta(run_dir)
    acts_dir = os.path.join(run_dir, ACTIVATIONS)
    if not os.path.isfile(os.path.join(acts_dir, "labels.npy")):
        raise ValueError(f"{run_dir!r} has no saved activations; record the run with keep_activations=True")
    if out is not None and os.path.realpath(out) == os.path.realpath(run_dir):
        raise ValueError("out must be a new directory, not the run being re-estimated")

    estimators = as_estimators([e["settings"] for e in meta["estimators"]] if estimators is None else estimators)
    labels = torch.from_numpy(np.load(os.path.join(acts_dir, "labels.npy"), allow_pickle=False))
    device = torch.device("cpu") if device is None else torch.device(device)
    layers = [l["name"] for l in meta["layers"]]
    widths = {l["name"]: l["width"] for l in meta["layers"]}
    # The saved activations are unreduced: the run's reduction (or the one asked for) is applied here.
    if reduce is None:
        reduce = (meta.get("reduce") or {}).get("spec")
    shapes = {k: None if v is None else tuple(v) for k, v in (meta.get("layer_shapes") or {}).items()}
    plan = reduce_mod.resolve(reduce, [(l, shapes.get(l)) for l in layers])
    reduced = {l: plan[l].width(shapes.get(l) or (widths[l],)) for l in layers}
    # Side variables are not re-estimated: their values are not saved with the activations.
    # Settings that depend on the layer (the network's own noise, after the reduction), as the tracker fixes them.
    info = [Layer(l["name"], l["width"], l.get("kind", "hidden"), l.get("transform"), l.get("module", ""),
                  l.get("pool"), l.get("select"), shapes.get(l["name"])) for l in meta["layers"]]
    bound = per_layer(estimators, layer_contexts(meta.get("layer_noise") or {}, info, plan))
    by_layer = layer_settings(estimators, bound)
    new_meta = {k: v for k, v in meta.items()
                if k not in ("format", "format_version", "start_time", "end_time", "complete", "resumed",
                             "estimator_layers", "targets")}
    if by_layer is not None:
        new_meta["estimator_layers"] = by_layer
    new_meta.update(estimators=[{"name": e.name, "settings": e.settings(), "has_lower": bool(e.has_lower)}
                                for e in estimators],
                    keep_activations=False, derived_from=os.path.abspath(run_dir),
                    reduce=None if reduce is None else {"spec": reduce_mod.spec_to_json(reduce), "widths": reduced})
    writer = RunWriter(out, new_meta, overwrite=overwrite)  # refuses a bad `out` before any work
    rows = []
    for k, seed in enumerate(meta["seeds"]):
        seed_labels = labels[k] if labels.ndim == 2 else labels  # [S, N]: each seed's own probe labels
        seed_dir = os.path.join(acts_dir, str(seed))
        names = os.listdir(seed_dir) if os.path.isdir(seed_dir) else []
        epochs = sorted(int(f[:-4]) for f in names if f.endswith(".npz") and f[:-4].isdigit())
        for layer in layers:
            per_epoch = max(1, labels.shape[-1] * widths[layer] * 4)
            chunk = max(1, buffer_bytes // per_epoch)
            for start in range(0, len(epochs), chunk):
                part = epochs[start:start + chunk]
                arrays = []
                for e in part:
                    with np.load(os.path.join(seed_dir, f"{e}.npz"), allow_pickle=False) as z:
                        arrays.append(z[layer])
                acts = torch.from_numpy(np.stack(arrays)).to(device)
                if plan[layer].kind != "flatten":
                    acts = reduce_mod.reduce_activations(acts, plan[layer], shape=shapes.get(layer) or (widths[layer],),
                                                         layer=layer).to(acts.dtype)
                rows += estimate_rows(acts, seed_labels, bound[layer], meta.get("fraction"), [(seed, e) for e in part],
                                       layer)
    rows = sort_rows(rows, meta["seeds"], layers, estimators)
    writer.add_metrics_many(sorted(read_metrics(os.path.join(run_dir, METRICS))[1].items()))
    writer.add_rows(rows)
    writer.finish(complete=True)
    return writer.run()
