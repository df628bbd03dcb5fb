"""Every estimator has one shape: data positional, options keyword-only, one result naming, configuration objects
that take every option of their function and write it to settings(), and one way of checking parameters."""
import dataclasses
import importlib
import inspect
import sys
import warnings

import numpy as np
import pytest
import torch

from infoplane._validate import check_bool, check_choice, check_float, check_int
from infoplane.estimators import (
    KDE,
    KNN,
    BinnedResult,
    Binning,
    Discrete,
    DiscreteResult,
    Estimator,
    KDEResult,
    Noisy,
    NoisyResult,
    PlaneResult,
    Renyi,
    WithNull,
    binned_mi,
    default_estimator,
    discrete_mi,
    from_settings,
    kde_mi,
    ksg_mi,
    noisy_mi,
    permutation_null,
    renyi_entropy,
    renyi_mi,
    ross_mi,
)
from infoplane.estimators.base import PROTOCOL_DEFAULTS, protocol_attribute
from infoplane.estimators.renyi import renyi_plane

# function -> its data arguments, in order (everything else must be keyword-only)
DATA = {binned_mi: ["activations", "labels"], kde_mi: ["activations", "labels"],
        discrete_mi: ["activations", "labels"], noisy_mi: ["activations", "labels"],
        permutation_null: ["estimator", "activations", "labels"], ksg_mi: ["a", "b"],
        ross_mi: ["activations", "labels"], renyi_entropy: ["a"], renyi_mi: ["a", "b"]}


@pytest.mark.parametrize("func", list(DATA), ids=lambda f: f.__name__)
def test_data_positional_options_keyword_only(func):
    params = inspect.signature(func).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == DATA[func]
    others = [p for p in params if p.name not in DATA[func]]
    assert others and all(p.kind is p.KEYWORD_ONLY for p in others)
    assert all(p.annotation is not p.empty for p in params)
    assert inspect.signature(func).return_annotation is not inspect.Signature.empty


def _options(func):
    return {p.name for p in inspect.signature(func).parameters.values() if p.kind is p.KEYWORD_ONLY}


# configuration class -> (function, function keyword -> constructor argument where they differ)
COVERS = [(Binning, binned_mi, {}), (KDE, kde_mi, {}), (Discrete, discrete_mi, {}), (Noisy, noisy_mi, {}),
          (WithNull, permutation_null, {}), (KNN, ksg_mi, {}), (KNN, ross_mi, {}), (Renyi, renyi_plane, {}),
          (Renyi, renyi_mi, {"sigma_a": "sigma_inputs", "sigma_b": "sigma"})]


@pytest.mark.parametrize("cls,func,renamed", COVERS, ids=lambda v: getattr(v, "__name__", ""))
def test_config_takes_every_option_of_its_function(cls, func, renamed):
    ctor = set(inspect.signature(cls).parameters)
    missing = {renamed.get(o, o) for o in _options(func)} - ctor
    assert not missing, f"{cls.__name__} lacks {missing} of {func.__name__}"
    for name, p in inspect.signature(cls).parameters.items():
        assert p.annotation is not p.empty, (cls.__name__, name)


NON_DEFAULT = [
    Binning(bins=12, range=(-2, 3), miller_madow=True), Binning(width=0.2), Binning(bins=7, adaptive=True),
    KDE(noise_var=0.2, precision="float64", memory_budget=2**20, name="k2"),
    Discrete(miller_madow=True),
    Noisy(0.3, samples=64, seed=5, precision="float32", memory_budget=2**20, control_variate=False),
    WithNull(KDE(noise_var=0.1), permutations=4, seed=3, memory_budget=2**22),
    KNN(k=5, memory_budget=2**21),
    Renyi(alpha=2.0, sigma=0.5, sigma_inputs=1.5, ixt_from="identity", method="randomized", probes=8, steps=9,
          seed=4, memory_budget=2**25),
]


@pytest.mark.parametrize("est", NON_DEFAULT, ids=repr)
def test_settings_round_trip_with_every_option_set(est):
    back = from_settings(est.settings())
    assert back == est and back.settings() == est.settings()
    assert type(back) is type(est)


@pytest.mark.parametrize("old,new", [
    ({"kind": "noisy", "name": "noisy", "noise_var": 0.1, "samples": 4096, "seed": 0, "precision": "float64"},
     Noisy(0.1)),
    ({"kind": "with-null", "name": "kde", "estimator": {"kind": "kde", "name": "kde", "noise_var": 0.001,
                                                        "precision": "float32"}, "permutations": 20, "seed": 0},
     WithNull(KDE())),
    ({"kind": "renyi", "name": "renyi", "alpha": 1.01, "sigma": "silverman", "sigma_inputs": "silverman",
      "ixt_from": "inputs", "method": "auto", "probes": 32, "steps": 30, "seed": 0}, Renyi()),
])
def test_settings_written_before_the_new_options_read_back_unchanged(old, new):
    est = from_settings(old)
    assert est == new and est.settings() == old


def test_new_options_are_used():
    acts, y = torch.rand(3, 40, 2), torch.arange(40) % 2
    got = Noisy(0.05, samples=64, control_variate=False)(acts, y)
    want = noisy_mi(acts, y, noise_var=0.05, samples=64, control_variate=False)
    assert torch.equal(got.ixt, want.ixt) and torch.equal(got.ixt_se, want.ixt_se)
    small = WithNull(Binning(), permutations=3, memory_budget=1)(acts, y)  # one batch item per call
    large = WithNull(Binning(), permutations=3)(acts, y)
    assert torch.equal(small.ity_null, large.ity_null)
    r = Renyi(ixt_from="identity", method="randomized", memory_budget=1, probes=4, steps=5)(acts, y)
    assert r.ixt.shape == (3,)


def test_old_positional_forms_warn_and_give_the_same_result():
    acts, y = torch.rand(2, 30, 2), torch.arange(30) % 3
    with pytest.warns(DeprecationWarning, match=r"noise_var=\.\.\."):
        old = noisy_mi(acts, y, 0.05, samples=50)
    new = noisy_mi(acts, y, noise_var=0.05, samples=50)
    assert all(torch.equal(getattr(old, f), getattr(new, f)) for f in ("ixt", "ity", "ixt_se", "ity_se"))
    with pytest.warns(DeprecationWarning, match=r"alpha=\.\.\., sigma=\.\.\."):
        old = renyi_entropy(acts, 2.0, 0.5)
    assert torch.equal(old, renyi_entropy(acts, alpha=2.0, sigma=0.5))
    with pytest.warns(DeprecationWarning, match=r"alpha=\.\.\."):
        old = renyi_mi(acts, y, 1.5, 0.4)
    new = renyi_mi(acts, y, alpha=1.5, sigma_a=0.4)
    assert torch.equal(old.mi, new.mi) and torch.equal(old.s_ab, new.s_ab)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the keyword form never warns
        renyi_mi(acts, y, alpha=1.5)
    with pytest.raises(TypeError, match="multiple values for alpha"):
        renyi_mi(acts, y, 1.5, alpha=2.0)
    with pytest.raises(TypeError, match="positional"):
        renyi_entropy(acts, 2.0, 0.5, "exact")


def test_result_fields():
    acts, y = torch.rand(2, 20, 2), torch.arange(20) % 2
    for res, cls, extra in [(binned_mi(acts, y), BinnedResult, []), (discrete_mi(acts, y), DiscreteResult, []),
                            (kde_mi(acts, y), KDEResult, ["ixt_lower", "ity_lower"]),
                            (noisy_mi(acts, y, noise_var=0.1, samples=20), NoisyResult, ["ixt_se", "ity_se"])]:
        assert type(res) is cls and isinstance(res, PlaneResult)
        assert [f.name for f in dataclasses.fields(res)] == ["ixt", "ity"] + extra
    assert not isinstance(discrete_mi(acts, y), BinnedResult)
    assert isinstance(binned_mi(acts, y), BinnedResult)
    assert hasattr(ksg_mi(acts, acts), "mi") and hasattr(ross_mi(acts, y), "mi")


@pytest.mark.parametrize("est", [Binning(), KDE(), Discrete(), Noisy(0.1), WithNull(KDE()), KNN(), Renyi()], ids=repr)
def test_protocol_attributes_are_declared(est):
    assert isinstance(est, Estimator)
    for name in PROTOCOL_DEFAULTS:
        assert protocol_attribute(est, name) == getattr(est, name)
    assert isinstance(est.fields, tuple) and est.fields[:2] == ("ixt", "ity")
    assert ("ixt_lower" in est.fields) == est.has_lower


def test_protocol_defaults():
    assert (Estimator.has_lower, Estimator.needs_inputs, Estimator.fields) == (False, False, ("ixt", "ity"))
    assert KNN.needs_inputs and Renyi().needs_inputs and not Renyi(ixt_from="identity").needs_inputs

    class Mine:  # a user's estimator that is not a subclass
        name = "mine"

        def settings(self):
            return {}

        def __call__(self, acts, labels):
            return binned_mi(acts, labels)

    mine = Mine()
    assert protocol_attribute(mine, "needs_inputs") is False
    assert protocol_attribute(mine, "has_lower") is False
    assert protocol_attribute(mine, "fields") == ("ixt", "ity")
    mine.has_lower = True
    assert protocol_attribute(mine, "fields") == ("ixt", "ity", "ixt_lower", "ity_lower")
    assert WithNull(mine).fields == ("ixt", "ity", "ixt_lower", "ity_lower", "ity_null", "ity_null_sd")
    with pytest.raises(ValueError, match="name must be one of"):
        protocol_attribute(mine, "kind")


def test_default_estimator():
    assert default_estimator() == Binning(bins=30, range=(-1, 1))
    assert default_estimator() is not default_estimator()  # a new object each time


def test_old_config_module_path_is_an_alias():
    sys.modules.pop("infoplane.estimators.knn_renyi_config", None)
    with pytest.warns(DeprecationWarning, match="infoplane.estimators.config"):
        old = importlib.import_module("infoplane.estimators.knn_renyi_config")
    assert old.KNN is KNN and old.Renyi is Renyi and old.PlaneResult is PlaneResult


# --- the validation helper -------------------------------------------------------------------------------------
@pytest.mark.parametrize("check,value", [(check_int, True), (check_int, np.bool_(False)), (check_float, True),
                                         (check_float, False)])
def test_bools_are_not_numbers(check, value):
    with pytest.raises(ValueError, match=r"^count must be .*; got (np\.)?(True|False)_?$"):
        check(value, "count")


def test_check_int():
    assert check_int(3, "n") == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_int(torch.tensor(4), "n") == 4
    for bad, match in [(1.0, "n must be an integer; got 1.0"), ("3", "n must be an integer; got '3'")]:
        with pytest.raises(ValueError, match=match):
            check_int(bad, "n")
    with pytest.raises(ValueError, match="n must be an integer >= 2; got 1"):
        check_int(1, "n", minimum=2)
    with pytest.raises(ValueError, match="bits must be an integer >= 1 and <= 24; got 25"):
        check_int(25, "bits", minimum=1, maximum=24)
    with pytest.raises(ValueError, match=r"k must be a positive integer; got 0"):
        check_int(0, "k", minimum=1, what="a positive integer")
    with pytest.raises(TypeError, match="epoch must be an integer"):
        check_int(1.5, "epoch", error=TypeError)


def test_check_float():
    assert check_float(2, "x") == 2.0 and check_float(np.float32(0.5), "x") == 0.5
    assert check_float(torch.tensor(0.25), "x") == 0.25 and check_float(np.array(1.5), "x") == 1.5
    for bad in [0, -1.0, float("nan"), float("inf"), "0.1", None]:
        with pytest.raises(ValueError, match=r"^noise_var must be a positive finite number; got "):
            check_float(bad, "noise_var", positive=True)
    assert check_float(float("inf"), "t", positive=True, finite=False) == float("inf")
    with pytest.raises(ValueError, match="t must be a positive number; got nan"):
        check_float(float("nan"), "t", positive=True, finite=False)
    with pytest.raises(ValueError, match="g must be a finite number >= 0; got -1"):
        check_float(-1, "g", minimum=0)


def test_check_bool_and_choice():
    assert check_bool(np.bool_(True), "flag") is True
    for bad in [1, 0, "yes", None]:
        with pytest.raises(ValueError, match=r"^flag must be True or False; got "):
            check_bool(bad, "flag")
    assert check_choice("exact", "method", ["auto", "exact"]) == "exact"
    for bad in ["EXACT", 1, True, None, ["auto"]]:
        with pytest.raises(ValueError, match=r"method must be one of \['auto', 'exact'\]; got "):
            check_choice(bad, "method", ["auto", "exact"])


@pytest.mark.parametrize("make,match", [
    (lambda: Binning(bins=True), "bins must be an integer >= 2"),
    (lambda: Binning(adaptive=1), "adaptive must be True or False"),
    (lambda: KDE(noise_var=True), "noise_var must be a positive finite number"),
    (lambda: KDE(memory_budget=False), "memory_budget must be a positive finite number"),
    (lambda: Noisy(0.1, samples=True), "samples must be an integer >= 2"),
    (lambda: Noisy(0.1, control_variate=1), "control_variate must be True or False"),
    (lambda: WithNull(KDE(), permutations=True), "permutations must be an integer >= 2"),
    (lambda: KNN(k=True), "k must be a positive integer"),
    (lambda: Renyi(seed=1.5), "seed must be an integer"),
    (lambda: Renyi(probes=False), "probes must be a positive integer"),
    (lambda: Renyi(method="fast"), "method must be one of"),
])
def test_config_objects_use_the_helper(make, match):
    with pytest.raises(ValueError, match=match):
        make()
