"""Execute notebooks/quickstart.ipynb end to end on a tiny training budget."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
# Appended to the parameter cell, so the notebook's own defaults stay as published.
SMALL_BUDGET = "\nEPOCHS = 3\nN_POINTS = 2\n"


def test_quickstart_notebook_runs_and_draws(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "EPOCHS" in params[0].source
    params[0].source += SMALL_BUDGET

    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    # Two planes and the curves of part 1, the comparison of part 2.
    assert len(images) >= 4
    # Part 2 left its runs and figures in the working directory it was given.
    for name in ("plane-binning.png", "curves-binning.png"):
        assert (tmp_path / "runs" / "quickstart" / "fraction-0.05" / name).is_file()
    assert os.path.isfile(tmp_path / "runs" / "quickstart" / "compare-binning.png")
