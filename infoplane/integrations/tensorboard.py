"""TensorBoard: infoplane's scalars and the plane figure in a TensorBoard log directory.

Per recorded epoch (global step = epoch), the scalars ``infoplane/<estimator>/ixt/<layer>`` and
``infoplane/<estimator>/ity/<layer>`` in bits (``.../seed<k>`` appended with several seeds, lower bounds under
``ixt_lower``/``ity_lower`` when the estimator gives them); at the end, the epoch-coloured information plane as
an image under ``infoplane/<estimator>/plane``. Gradient statistics, when recorded, under
``infoplane/gradients/<mean_norm|std_norm|snr>/<layer>``. Needs ``pip install 'infoplane[tensorboard]'``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import matplotlib.pyplot as plt

from infoplane.integrations.backend import (
    as_run,
    gradient_tags,
    log_run,
    plane_figure,
    require,
    scalar_tags,
    sharpness_tags,
)
from infoplane.runs.format import Row, SharpnessRow
from infoplane.runs.gradfile import GradientRecord
from infoplane.runs.reader import Run

__all__ = ["TensorBoardSink", "export_tensorboard"]


def _summary_writer(logdir):
    require("tensorboard", "tensorboard", "TensorBoard logging")
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(os.fspath(logdir))


class TensorBoardSink:
    """Log a tracker's rows and figure to TensorBoard.

    Parameters
    ----------
    target : SummaryWriter, str or os.PathLike
        A writer (``torch.utils.tensorboard.SummaryWriter``, tensorboardX's, or a Lightning
        ``TensorBoardLogger.experiment``), which stays open at the end, or a log directory, for which a writer is
        opened here and closed by :meth:`close`.
    figure : bool, default True
        Log the plane figure at :meth:`close`.
    """

    def __init__(self, target: Any, *, figure: bool = True) -> None:
        if isinstance(target, (str, os.PathLike)):
            self.writer, self._owned = _summary_writer(target), True
        elif hasattr(target, "add_scalar") and hasattr(target, "add_figure"):
            self.writer, self._owned = target, False
        else:
            raise TypeError(f"TensorBoardSink needs a SummaryWriter or a log directory, got {type(target).__name__}")
        self.figure = bool(figure)

    def _write(self, lines: Sequence[Any], run: Run, tags: Callable[[Any, int], list]) -> None:
        # every tag of every line at its epoch (the global step), then one flush
        n_seeds = max(1, len(run.seeds))
        for line in lines:
            for tag, value in tags(line, n_seeds):
                self.writer.add_scalar(tag, value, global_step=int(line.epoch))
        self.writer.flush()

    def log_rows(self, rows: Sequence[Row], run: Run) -> None:
        """Write the scalars of ``rows`` (global step = epoch) and flush.

        Parameters
        ----------
        rows : list of Row
        run : Run
            The run so far (gives the number of seeds).
        """
        self._write(rows, run, scalar_tags)

    def log_gradients(self, records: Sequence[GradientRecord], run: Run) -> None:
        """Write the scalars of gradient statistics (global step = epoch) and flush.

        Parameters
        ----------
        records : list of GradientRecord
        run : Run
        """
        self._write(records, run, gradient_tags)

    def log_sharpness(self, rows: Sequence[SharpnessRow], run: Run) -> None:
        """Write the sharpness values of ``rows`` as ``sharpness/<measure>`` (global step = epoch) and flush.

        Parameters
        ----------
        rows : list of SharpnessRow
        run : Run
            The run so far (gives the number of seeds).
        """
        self._write(rows, run, sharpness_tags)

    def log_figure(self, run: Run, step: Optional[int] = None) -> None:
        """Write the plane figure of every estimator of ``run`` now (on demand).

        Parameters
        ----------
        run : Run or path
        step : int or None
            Global step of the image; default: the run's last epoch.
        """
        run = as_run(run)
        if not len(run.epochs):
            return
        step = int(run.epochs[-1]) if step is None else int(step)
        for estimator in run.estimators:
            fig = plane_figure(run, estimator)
            try:
                self.writer.add_figure(f"infoplane/{estimator}/plane", fig, global_step=step, close=False)
            finally:
                plt.close(fig)
        self.writer.flush()

    def close(self, run: Run) -> None:
        """Write the final figure; close the writer if this sink opened it."""
        try:
            if self.figure:
                self.log_figure(run)
        finally:
            if self._owned:
                self.writer.close()
            else:
                self.writer.flush()


def export_tensorboard(run: Union[Run, str, os.PathLike], logdir: Union[str, os.PathLike]) -> str:
    """Write a finished run's scalars and figure into a TensorBoard log directory.

    Parameters
    ----------
    run : Run, str or os.PathLike
        A run or its directory.
    logdir : str or os.PathLike
        TensorBoard log directory (created if needed).

    Returns
    -------
    str
        ``logdir``.
    """
    log_run(as_run(run), TensorBoardSink(logdir))
    return os.fspath(logdir)
