"""The information-bottleneck curve against closed forms and a brute-force search over encoders."""
import itertools

import numpy as np
import pytest

import infoplane
from infoplane.bounds import ib_curve


def binary_entropy(q):
    q = np.clip(q, 1e-300, 1.0)
    r = np.clip(1.0 - q, 1e-300, 1.0)
    return -(q * np.log2(q) + r * np.log2(r))


def inverse_binary_entropy(v):
    lo, hi = 0.0, 0.5
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binary_entropy(mid) < v else (lo, mid)
    return (lo + hi) / 2


def bsc_curve(r, flip):
    """Doubly symmetric binary source: I(T;Y) = 1 - h(flip * h^-1(1 - r)) (Mrs. Gerber's lemma), * the convolution."""
    a = inverse_binary_entropy(1.0 - r)
    return 1.0 - binary_entropy(flip * (1 - a) + a * (1 - flip))


@pytest.mark.parametrize("flip", [0.05, 0.1, 0.25])
def test_a_binary_symmetric_channel_gives_its_closed_form_curve(flip):
    p = np.array([[(1 - flip) / 2, flip / 2], [flip / 2, (1 - flip) / 2]])
    c = ib_curve(p, betas=np.geomspace(0.1, 1e3, 120))
    assert np.all(np.diff(c.ixt) > 0) and np.all(np.diff(c.ity) >= 0)
    assert c.ixt[0] == pytest.approx(0, abs=1e-12) and c.ity[0] == pytest.approx(0, abs=1e-12)
    expected = np.array([bsc_curve(r, flip) for r in c.ixt])
    np.testing.assert_allclose(c.ity, expected, atol=1e-6)
    assert c.ixt[-1] == pytest.approx(1.0, abs=1e-6)  # T = X at the end
    assert c.ity[-1] == pytest.approx(1.0 - binary_entropy(flip), abs=1e-9)
    assert c.i_xy == pytest.approx(1.0 - binary_entropy(flip), abs=1e-12)
    assert len(c.ixt) > 20  # the curve is traced, not only its ends


def test_a_deterministic_label_gives_the_straight_line():
    # X uniform on 6 values, Y = x mod 3: H(Y) = log2 3, and the curve is min(I(X;T), H(Y)).
    p = np.zeros((6, 3))
    p[np.arange(6), np.arange(6) % 3] = 1 / 6
    c = ib_curve(p)
    h_y = np.log2(3)
    assert c.h_y == pytest.approx(h_y) and c.i_xy == pytest.approx(h_y)
    np.testing.assert_allclose(c.ity, np.minimum(c.ixt, h_y), atol=1e-6)
    assert c.ity[-1] == pytest.approx(h_y, abs=1e-6)


def _brute_force(p, n_t, steps):
    """Every encoder q(t|x) on a grid (|T| = 2): (I(X;T), I(T;Y)) of each, computed with plain loops."""
    p_x, p_y = p.sum(1), p.sum(0)
    grid = np.linspace(0.0, 1.0, steps)
    out = []
    for qs in itertools.product(grid, repeat=p.shape[0]):
        enc = np.array([[q, 1 - q] for q in qs])
        q_t = p_x @ enc
        ixt = sum(p_x[x] * enc[x, t] * np.log2(enc[x, t] / q_t[t])
                  for x in range(p.shape[0]) for t in range(n_t) if enc[x, t] > 0)
        joint = enc.T @ p
        ity = sum(joint[t, y] * np.log2(joint[t, y] / (q_t[t] * p_y[y]))
                  for t in range(n_t) for y in range(p.shape[1]) if joint[t, y] > 0)
        out.append((ixt, ity))
    return np.array(out)


def test_no_encoder_beats_the_curve_and_the_curve_is_near_the_best_encoder():
    rng = np.random.default_rng(3)
    p = rng.random((3, 2))
    p /= p.sum()
    c = ib_curve(p, n_t=2, betas=np.geomspace(0.1, 1e3, 80))
    brute = _brute_force(p, 2, 41)
    for ixt, ity in zip(c.ixt, c.ity):
        # no grid encoder with no more I(X;T) has clearly more I(T;Y): the curve is (near) the best
        feasible = brute[brute[:, 0] <= ixt + 1e-12]
        assert feasible[:, 1].max() <= ity + 1e-6
        # and the curve's point is reachable: some grid encoder comes close to it
        near = brute[brute[:, 0] <= ixt + 0.02]
        assert near[:, 1].max() >= ity - 0.02


def test_the_top_level_name_and_its_errors():
    assert infoplane.ib_curve is ib_curve
    with pytest.raises(ValueError, match="must sum to 1.*sums to 2"):
        ib_curve([[1.0, 0.5], [0.25, 0.25]])
    with pytest.raises(ValueError, match="non-negative"):
        ib_curve([[1.5, -0.5], [0.0, 0.0]])
    with pytest.raises(ValueError, match="2-d array"):
        ib_curve([0.5, 0.5])
    with pytest.raises(ValueError, match="betas"):
        ib_curve([[0.5, 0.0], [0.0, 0.5]], betas=[1.0, -2.0])
    with pytest.raises(ValueError, match="n_t must be a positive integer"):
        ib_curve([[0.5, 0.0], [0.0, 0.5]], n_t=True)


def test_chain_check_counts_growth_beyond_the_tolerance():
    from infoplane.bounds import chain_check

    values = np.array([[5.0, 4.0, 4.2, 1.0],      # layer 2 grows by 0.2
                       [5.0, np.nan, 6.0, 6.0]])  # NaN is never a violation; 6.0 -> 6.0 is not growth
    c = chain_check(values)
    assert c.count == 1
    assert c.violations.tolist() == [[False, True, False], [False, False, False]]
    np.testing.assert_allclose(c.excess[0], [0.0, 0.2, 0.0])
    assert chain_check(values, tol=0.25).count == 0
    # plain loops as the oracle on random data
    rng = np.random.default_rng(0)
    r = rng.random((7, 5, 6))
    expected = sum(r[i, j, k + 1] - r[i, j, k] > 0.1 for i in range(7) for j in range(5) for k in range(5))
    assert chain_check(r, tol=0.1).count == expected
    # equal information estimated through different count tables differs in the last bits: not a violation
    h = 0.99915712
    assert chain_check([h, h + 4.44e-16, np.nextafter(h + 4.44e-16, 2.0)]).count == 0
    assert chain_check([h, h + 1e-6]).count == 1
    with pytest.raises(ValueError, match="at least two"):
        chain_check([1.0])
    with pytest.raises(ValueError, match="tol must be"):
        chain_check(values, tol=-1)
