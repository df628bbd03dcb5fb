"""The benchmark scripts (``benchmarks/*.py``) loaded as modules, for the tests that check them."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    """``benchmarks/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
