"""The module paths from before the subpackage layout still import, with a DeprecationWarning naming the new path."""
import importlib
import json
import subprocess
import sys
import warnings

import infoplane
from infoplane._compat import MOVED


def test_every_old_path_gives_the_module_at_its_new_home_with_a_warning():
    # A fresh interpreter, where no old path has been imported yet (an imported one warns only once).
    code = ("import importlib, json, sys, warnings\n"
            "warnings.simplefilter('error')\n"
            "import infoplane\n"
            "from infoplane._compat import MOVED\n"
            "warnings.simplefilter('always')\n"
            "bad = []\n"
            "for old, new in sorted(MOVED.items()):\n"
            "    with warnings.catch_warnings(record=True) as seen:\n"
            "        module = importlib.import_module(old)\n"
            "    msgs = [str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)]\n"
            "    if module is not importlib.import_module(new) or not any(new in m for m in msgs):\n"
            "        bad.append((old, module.__name__, msgs))\n"
            "print(json.dumps(bad))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], "old paths that do not alias their new module with a warning"
    assert len(MOVED) >= 20


def test_from_an_old_path_imports_the_same_objects():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from infoplane.store import RunWriter as old_writer
        from infoplane.tracker import Tracker as old_tracker
    from infoplane.runs.writer import RunWriter
    from infoplane.tracking.tracker import Tracker

    assert old_writer is RunWriter and old_tracker is Tracker is infoplane.Tracker


def test_the_old_quantize_module_path_leaves_the_function_in_place():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module("infoplane.quantize")
    assert module.__name__ == "infoplane.networks.quantize"
    assert callable(infoplane.quantize) and infoplane.quantize is module.quantize


def test_importing_the_package_warns_of_nothing():
    proc = subprocess.run([sys.executable, "-W", "error", "-c",
                           "import infoplane, infoplane.plot, infoplane.data, infoplane.experiment, "
                           "infoplane.capture, infoplane.networks, infoplane.integrations, infoplane.cli.main"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
