"""Deprecated import paths: the modules that moved into subpackages stay importable for one release.

``import infoplane.store`` (or ``from infoplane.tracker import Tracker``) still works and gives the module at its
new home, with a :class:`DeprecationWarning` that names the new path. The table below is the one list of old
paths; nothing else in the package refers to them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED: dict[str, str] = {
    "infoplane.labels": "infoplane.data.labels",
    "infoplane.probeset": "infoplane.data.probeset",
    "infoplane.modelfile": "infoplane.data.modelfile",
    "infoplane.reduce": "infoplane.capture.reduce",
    "infoplane.quantize": "infoplane.networks.quantize",
    "infoplane.noise": "infoplane.networks.noise",
    "infoplane.schedule": "infoplane.tracking.schedule",
    "infoplane.recorder": "infoplane.tracking.recorder",
    "infoplane.tracker": "infoplane.tracking.tracker",
    "infoplane.distributed": "infoplane.tracking.distributed",
    "infoplane.runfiles": "infoplane.runs.format",
    "infoplane.runmeta": "infoplane.runs.meta",
    "infoplane.rundir": "infoplane.runs.lifecycle",
    "infoplane.store": "infoplane.runs.writer",
    "infoplane.run": "infoplane.runs.reader",
    "infoplane.reestimate": "infoplane.runs.reestimate",
    "infoplane.stats": "infoplane.viz.stats",
    "infoplane.animation": "infoplane.viz.animation",
    "infoplane.html_report": "infoplane.viz.report",
    "infoplane.raysweep": "infoplane.experiment.raysweep",
    "infoplane.estimators.knn_renyi_config": "infoplane.estimators.config",
}


# Names an old module offered that its new home cannot re-export without an import cycle: the alias of the old path
# is then a thin module that looks names up in the new module first, then here.
EXTRA: dict[str, dict[str, str]] = {
    "infoplane.tracker": {"estimate": "infoplane.runs.reestimate"},
}


def _proxy(old: str, new: types.ModuleType) -> types.ModuleType:
    module = types.ModuleType(old, new.__doc__)
    extra = EXTRA[old]

    def __getattr__(name: str) -> object:
        if name in extra:
            return getattr(importlib.import_module(extra[name]), name)
        return getattr(new, name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path in :data:`MOVED` and loads it as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 (importlib protocol)
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):  # noqa: D102
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} is deprecated and will be removed in the next release; import {new} instead",
                      DeprecationWarning, stacklevel=6)
        module = importlib.import_module(new)
        return _proxy(spec.name, module) if spec.name in EXTRA else module

    def exec_module(self, module):  # noqa: D102 (the module is already executed at its new path)
        pass


def install() -> None:
    """Put the finder on ``sys.meta_path`` once per process."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())


class Package(types.ModuleType):
    """The ``infoplane`` package's module type: an old submodule path never replaces a public function.

    ``infoplane.quantize`` is the function; importing the deprecated module path ``infoplane.quantize`` would make
    the import system set the package attribute to the module. This keeps the function.
    """

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and f"{self.__name__}.{name}" in MOVED and callable(
                self.__dict__.get(name)) and not isinstance(self.__dict__.get(name), types.ModuleType):
            return
        super().__setattr__(name, value)
