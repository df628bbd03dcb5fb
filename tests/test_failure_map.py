"""The failure map's ground truths (benchmarks/failure_map.py): what its tables divide by must be right."""
import math

import numpy as np
from _benchmark_scripts import load


def load_script():
    return load("failure_map")


def test_gaussian_pair_has_the_requested_mi():
    fm = load_script()
    rng = np.random.default_rng(0)
    x, y, rho = fm.gaussian_pair(200_000, 3, 2.0, rng)
    # Oracle: the Gaussian MI from the sample covariance, -1/2 log2(det(C) / (det(Cx) det(Cy))).
    c = np.cov(np.hstack([x, y]).T)
    mi = -0.5 * math.log2(np.linalg.det(c) / (np.linalg.det(c[:3, :3]) * np.linalg.det(c[3:, 3:])))
    assert abs(mi - 2.0) < 0.02


def test_pca_goes_through_infoplane_and_recovers_its_components():
    fm = load_script()
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3000, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    scores, comps = fm.pca(a, 2)
    assert comps.shape == (6, 2) and np.allclose(comps.T @ comps, np.eye(2), atol=1e-9)
    assert np.allclose((a - a.mean(0)) @ comps, scores.numpy(), atol=1e-9)
    # Oracle: numpy's SVD of the centred data; components agree up to sign.
    _, _, vt = np.linalg.svd(a - a.mean(0), full_matrices=False)
    assert np.allclose(np.abs(vt[:2] @ comps), np.eye(2), atol=1e-6)


def test_truth_after_projection_matches_the_full_truth_when_nothing_is_dropped():
    fm = load_script()
    d, mi = 4, 3.0
    rho = math.sqrt(1 - 2 ** (-2 * mi / d))
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(d, d)))
    assert abs(fm.gaussian_mi_of_projections(q, q, rho) - mi) < 1e-9  # a rotation keeps all information
    # One axis kept on each side, the same axis: the MI of one correlated pair.
    e = np.eye(d)[:, :1]
    assert abs(fm.gaussian_mi_of_projections(e, e, rho) - mi / d) < 1e-9


def test_ross_truth_limits():
    fm = load_script()
    assert abs(fm.ross_truth(4, 1.0) - 2.0) < 1e-12  # disjoint boxes: log2 C
    assert abs(fm.ross_truth(4, 0.0)) < 1e-12  # identical boxes: nothing
    c, s = fm.ross_setup(1.0)
    assert abs(fm.ross_truth(c, s) - 1.0) < 1e-9
