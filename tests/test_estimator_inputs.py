"""Bad input to the estimators raises a ValueError that names the problem; good input of every form is accepted."""
import numpy as np
import pytest
import torch

from infoplane.estimators import KDE, Binning, binned_mi, from_settings, kde_mi

ESTIMATORS = [
    lambda a, y: binned_mi(a, y, bins=30, range=(-1, 1)),
    lambda a, y: binned_mi(a, y, width=0.07),
    lambda a, y: binned_mi(a, y, bins=30, adaptive=True),
    lambda a, y: kde_mi(a, y, noise_var=0.1),
]


@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_non_finite_activations_name_the_batch_index(est, bad, word):
    acts = torch.rand(3, 4, 50, 2)
    acts[2, 1, 7, 0] = bad
    with pytest.raises(ValueError, match=rf"{word} at batch index \(2, 1\)"):
        est(acts, torch.arange(50) % 2)


@pytest.mark.parametrize("est", ESTIMATORS)
def test_non_finite_single_input_is_reported(est):
    acts = torch.rand(50, 2)
    acts[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN in the single"):
        est(acts, torch.arange(50) % 2)


def test_huge_but_finite_values_are_not_mistaken_for_inf():
    acts = torch.full((2, 10, 3), 3e38)
    acts[:, ::2] = -3e38
    r = binned_mi(acts, torch.arange(10) % 2, width=1e37)
    assert torch.all(torch.isfinite(r.ixt))


@pytest.mark.parametrize("est", ESTIMATORS)
def test_labels_that_do_not_match_n(est):
    with pytest.raises(ValueError, match="does not match activations with N = 50"):
        est(torch.rand(50, 3), torch.arange(49) % 2)


@pytest.mark.parametrize("est", ESTIMATORS)
def test_too_few_samples_and_no_units(est):
    with pytest.raises(ValueError, match="N >= 2"):
        est(torch.rand(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="d = 0"):
        est(torch.rand(10, 0), torch.arange(10) % 2)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., N, d\]"):
        est(torch.rand(10), torch.arange(10) % 2)


@pytest.mark.parametrize("noise", [0, -1e-3, float("nan"), float("inf"), "big"])
def test_noise_var_must_be_positive(noise):
    with pytest.raises(ValueError, match="noise_var"):
        kde_mi(torch.rand(10, 2), torch.arange(10) % 2, noise_var=noise)
    with pytest.raises(ValueError, match="noise_var"):
        KDE(noise_var=noise)


@pytest.mark.parametrize("kwargs,word", [
    (dict(width=0.07, bins=30), "width="), (dict(width=0.07, range=(-1, 1)), "width="),
    (dict(width=0.07, adaptive=True), "width="), (dict(bins=30, range=(-1, 1), adaptive=True), "adaptive"),
    (dict(bins=1), "bins"), (dict(bins=2.5), "bins"), (dict(range=(1, -1)), "range"), (dict(range=(0,)), "range"),
    (dict(width=0), "width"), (dict(width=-0.1), "width"),
])
def test_conflicting_or_invalid_grid_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        binned_mi(torch.rand(10, 2), torch.arange(10) % 2, **kwargs)
    with pytest.raises(ValueError, match=word):
        Binning(**kwargs)


def test_bad_labels():
    acts = torch.rand(10, 2)
    with pytest.raises(ValueError, match="whole numbers"):
        binned_mi(acts, torch.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="one-hot"):
        binned_mi(acts, torch.full((10, 3), 0.5))
    with pytest.raises(ValueError, match="does not match"):
        binned_mi(torch.rand(4, 10, 2), torch.zeros(3, 10, dtype=torch.long))


def test_unknown_settings_and_precision():
    with pytest.raises(ValueError, match="unknown estimator settings"):
        from_settings({"kind": "no-such-kind"})  # "knn" is a kind; this one is not
    with pytest.raises(ValueError, match="unknown estimator setting"):
        from_settings({"kind": "kde", "noise": 0.1})
    with pytest.raises(ValueError, match="precision"):
        kde_mi(torch.rand(10, 2), torch.arange(10) % 2, precision="float16")


def test_settings_round_trip_and_names():
    for est in (Binning(bins=30, range=(-1, 1)), Binning(width=0.07), Binning(bins=12, adaptive=True),
                KDE(noise_var=0.1, precision="float64"), KDE(name="kde-wide", noise_var=1.0)):
        again = from_settings(est.settings())
        assert again == est and again.name == est.name
    assert [e.name for e in (Binning(), Binning(width=0.5), Binning(adaptive=True), KDE())] == [
        "binning", "binning-width", "adaptive", "kde"]


def test_numpy_inputs_integer_activations_and_label_forms_agree():
    rng = np.random.default_rng(0)
    acts = rng.integers(-3, 4, size=(40, 3))
    y = rng.integers(0, 3, size=40)
    ref = binned_mi(torch.from_numpy(acts).double(), torch.from_numpy(y), width=1.0)
    for labels in (y, y.tolist(), np.eye(3)[y], torch.from_numpy(y).float(), y + 10):
        r = binned_mi(acts, labels, width=1.0)
        assert float(r.ixt) == float(ref.ixt) and float(r.ity) == float(ref.ity)


@pytest.mark.parametrize("call", [
    lambda a, y: binned_mi(a, y, bins=np.True_), lambda a, y: kde_mi(a, y, noise_var=False),
    lambda a, y: kde_mi(a, y, memory_budget=True),
], ids=["bins", "noise_var", "memory_budget"])
def test_bools_are_not_numbers(call):
    with pytest.raises(ValueError, match=r"must be .*; got (np\.)?(True|False)"):
        call(torch.rand(10, 2), torch.arange(10) % 2)
