"""The saturation note's cause and advice fit the estimator: never a larger noise_var for the noisy estimator."""
import math

import matplotlib
import matplotlib.pyplot as plt
import pytest

import infoplane.plot as ip
from infoplane.runs.writer import Row, Run
from infoplane.viz import drawing

matplotlib.use("Agg")
N = 256


def saturated_run(settings):
    meta = {"layers": [{"name": "h"}], "n": N, "log2_n": math.log2(N), "h_y": 1.0, "seeds": [0], "fraction": 0.8,
            "estimators": [{"name": "est", "settings": settings}], "data": "toy"}
    return Run(meta, [Row(0, 0.8, e, "h", "est", math.log2(N), 0.5, math.nan, math.nan) for e in range(4)])


@pytest.mark.parametrize("settings, says, never", [
    ({"kind": "noisy", "noise_var": 0.01}, ["Do not raise noise_var", "add_noise"], ["Try a larger noise_var"]),
    ({"kind": "noisy", "noise_var": None}, ["another network"], ["Try a larger noise_var"]),
    ({"kind": "kde", "noise_var": 0.01}, ["larger noise_var"], ["bins"]),
    ({"kind": "binning", "bins": 30, "range": [-1, 1]}, ["fewer bins", "--range 0 MAX"], ["noise_var"]),
    ({"kind": "binning", "width": 0.07}, ["wider bin"], ["noise_var", "--range"]),
    ({"kind": "binning", "bins": 30, "adaptive": True}, ["fewer bins"], ["noise_var", "--range"]),
    ({"kind": "with-null", "estimator": {"kind": "binning", "width": 0.5}}, ["wider bin"], ["noise_var"]),
    ({"kind": "discrete"}, ["right for this quantised network"], ["noise_var", "bins"]),
    ({"kind": "knn", "k": 3}, ["another estimator"], ["noise_var", "bins"]),
])
def test_advice_fits_the_estimator(settings, says, never):
    run = saturated_run(settings)
    with pytest.warns(ip.SaturationWarning) as record:
        fig = ip.information_plane(run)
    plt.close(fig)
    # the saturation note itself: other warnings (matplotlib's about open figures, say) may come first
    text = next(str(w.message) for w in record if issubclass(w.category, ip.SaturationWarning))
    assert drawing.saturation_advice(run, "est") in text
    for phrase in says:
        assert phrase in text, (phrase, text)
    for phrase in never:
        assert phrase not in text, (phrase, text)
    if settings["kind"] == "noisy":  # the cause does not blame the estimator: the noise is the network's
        assert "not the network" not in drawing.saturation_message(run, "est", ["h"])
