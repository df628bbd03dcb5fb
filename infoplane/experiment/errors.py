"""The errors of :func:`infoplane.experiment.track` and the files it keeps beside a run.

A :class:`ConfigError` names the arguments of ``track()`` at fault in backquotes, as they are written in a call
(`` `lr` ``, `` `resume=True` ``, `` `probe='train'` ``) and lists their names in ``arguments``, so that a front end
can name its own spelling instead: the command line shows ``--lr``, ``--resume``, ``--probe train``.
"""
from __future__ import annotations

from infoplane.runs.format import STATE

__all__ = ["ConfigError", "RunExistsError", "STATE_FILE"]

#: The training state saved beside a run while it trains (the run directory knows it as one of infoplane's files).
STATE_FILE = STATE


class ConfigError(ValueError):
    """A setting of :func:`~infoplane.experiment.track` that cannot work (the command line reports it as a usage
    error).

    Parameters
    ----------
    message : str
        What is wrong and how to fix it; the arguments of ``track()`` it names are in backquotes.
    *arguments : str
        The names of those arguments (``"lr"``), the one at fault first.

    Attributes
    ----------
    argument : str or None
        The argument of ``track()`` at fault (``"lr"``); None when the fault lies elsewhere (a model file, a
        directory, the data).
    arguments : tuple of str
        Every argument of ``track()`` that the message names, ``argument`` first.
    """

    def __init__(self, message: str, *arguments: str) -> None:
        super().__init__(message)
        self.arguments = tuple(arguments)
        self.argument = self.arguments[0] if self.arguments else None


class RunExistsError(ConfigError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""
