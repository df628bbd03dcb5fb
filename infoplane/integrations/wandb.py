"""Weights & Biases: infoplane's scalars and the plane figure in a W&B run.

The same tags as TensorBoard (``infoplane/<estimator>/ixt/<layer>``, ``.../ity/<layer>``), logged against a
custom x-axis ``infoplane/epoch`` (declared with ``define_metric``), so that they never fight the trainer's own
step counter; the epoch-coloured plane is logged at the end as a ``wandb.Image`` under
``infoplane/<estimator>/plane``; gradient statistics, when recorded, under
``infoplane/gradients/<mean_norm|std_norm|snr>/<layer>``. Needs ``pip install 'infoplane[wandb]'``. Offline runs
(``WANDB_MODE=offline`` or ``wandb.init(mode="offline")``) work the same and touch no network.
"""
from __future__ import annotations

import io
import os
from typing import Any, Callable, Optional, Sequence, Union

import matplotlib.pyplot as plt

from infoplane.integrations.backend import (
    as_run,
    gradient_tags,
    log_run,
    plane_figure,
    require,
    rows_by_epoch,
    scalar_tags,
    sharpness_tags,
)
from infoplane.runs.format import Row, SharpnessRow
from infoplane.runs.gradfile import GradientRecord
from infoplane.runs.reader import Run

__all__ = ["WandbSink", "export_wandb", "EPOCH_KEY"]

#: The custom x-axis of every infoplane metric.
EPOCH_KEY = "infoplane/epoch"


class WandbSink:
    """Log a tracker's rows and figure to a W&B run.

    Parameters
    ----------
    run : wandb run or Lightning WandbLogger
        The result of ``wandb.init(...)`` (or a logger whose ``experiment`` is one). It is not finished here:
        the caller owns it.
    figure : bool, default True
        Log the plane figure at :meth:`close`.
    """

    def __init__(self, run: Any, *, figure: bool = True) -> None:
        if hasattr(run, "experiment") and not hasattr(run, "define_metric"):
            run = run.experiment
        if not (hasattr(run, "log") and hasattr(run, "define_metric")):
            raise TypeError(f"WandbSink needs a wandb run (wandb.init(...)), got {type(run).__name__}")
        self.run = run
        self.figure = bool(figure)
        self._defined = False

    def _define(self):
        if not self._defined:
            self.run.define_metric(EPOCH_KEY)
            self.run.define_metric("infoplane/*", step_metric=EPOCH_KEY)
            self.run.define_metric("sharpness/*", step_metric=EPOCH_KEY)
            self._defined = True

    def _log(self, lines: Sequence[Any], run: Run, tags: Callable[[Any, int], list]) -> None:
        # one run.log per epoch, carrying infoplane/epoch, with the tags of every line of that epoch
        self._define()
        n_seeds = max(1, len(run.seeds))
        for epoch, group in rows_by_epoch(lines):
            values: dict[str, float] = {EPOCH_KEY: epoch}
            for line in group:
                values.update(tags(line, n_seeds))
            self.run.log(values)

    def log_rows(self, rows: Sequence[Row], run: Run) -> None:
        """Log the scalars of ``rows``: one ``run.log`` per epoch, carrying ``infoplane/epoch``.

        Parameters
        ----------
        rows : list of Row
        run : Run
            The run so far (gives the number of seeds).
        """
        self._log(rows, run, scalar_tags)

    def log_gradients(self, records: Sequence[GradientRecord], run: Run) -> None:
        """Log gradient statistics (``infoplane/gradients/<field>/<layer>``): one ``run.log`` per epoch.

        Parameters
        ----------
        records : list of GradientRecord
        run : Run
        """
        self._log(records, run, gradient_tags)

    def log_sharpness(self, rows: Sequence[SharpnessRow], run: Run) -> None:
        """Log the sharpness values of ``rows`` as ``sharpness/<measure>``: one ``run.log`` per epoch, carrying
        ``infoplane/epoch``.

        Parameters
        ----------
        rows : list of SharpnessRow
        run : Run
            The run so far (gives the number of seeds).
        """
        self._log(rows, run, sharpness_tags)

    def log_figure(self, run: Run, step: Optional[int] = None) -> None:
        """Log the plane figure of every estimator now, as a ``wandb.Image`` (on demand).

        Parameters
        ----------
        run : Run or path
        step : int or None
            Value of ``infoplane/epoch`` logged with it; default: the run's last epoch.
        """
        wandb = require("wandb", "wandb", "W&B logging")
        from PIL import Image

        run = as_run(run)
        if not len(run.epochs):
            return
        self._define()
        values = {EPOCH_KEY: int(run.epochs[-1]) if step is None else int(step)}
        for estimator in run.estimators:
            fig = plane_figure(run, estimator)
            try:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=100)
            finally:
                plt.close(fig)
            buf.seek(0)
            values[f"infoplane/{estimator}/plane"] = wandb.Image(Image.open(buf).convert("RGB"),
                                                                 caption=f"information plane ({estimator})")
        self.run.log(values)

    def close(self, run: Run) -> None:
        """Log the final figure (the W&B run itself stays open: its owner finishes it)."""
        if self.figure:
            self.log_figure(run)


def export_wandb(run: Union[Run, str, os.PathLike], wandb_run: Any) -> None:
    """Log a finished run's scalars and figure into a W&B run.

    Parameters
    ----------
    run : Run, str or os.PathLike
    wandb_run : wandb run

    Returns
    -------
    None
    """
    log_run(as_run(run), WandbSink(wandb_run))
