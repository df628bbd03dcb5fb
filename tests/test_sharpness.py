"""Sharpness measures against oracles computed here: eigen-decompositions, traces, grid searches, rescalings."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from infoplane.sharpness import (
    adaptive_sharpness,
    hessian_top_eigenvalue,
    hessian_trace,
    random_sharpness,
    sam_sharpness,
)


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T A w (with loss_fn returning the output): its Hessian is A everywhere."""

    def __init__(self, a, w):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.w @ self.a @ self.w


def identity_loss(out, y):
    return out


def symmetric(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T


def quadratic(eigenvalues, seed=0):
    a = symmetric(eigenvalues, seed)
    w = np.random.default_rng(seed + 1).standard_normal(len(eigenvalues))
    return Quadratic(a, w), a, torch.zeros(4, 1), torch.zeros(4)


def relu_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    return net, x, y


# ------------------------------------------------------------------------------------------- Hessian spectrum

@pytest.mark.parametrize("eigenvalues", [[5.0, 3.0, 2.0, 1.0, 0.5, 0.1, -0.3, -1.0],
                                         [-6.0, 2.0, 0.5, 0.3, 0.1, -0.5, -1.0, -2.0]],
                         ids=["dominant-positive", "dominant-negative"])
def test_top_eigenvalue_of_a_quadratic_is_the_largest_eigenvalue(eigenvalues):
    model, a, x, y = quadratic(eigenvalues)
    res = hessian_top_eigenvalue(model, identity_loss, x, y, tol=1e-12, max_iter=1000)
    expected = np.linalg.eigvalsh(a).max()
    assert res.converged and res.iterations < 2000
    assert res.value == pytest.approx(expected, rel=1e-8)
    assert res.loss == pytest.approx(0.5 * model.w.detach().numpy() @ a @ model.w.detach().numpy())


def test_top_eigenvalue_reports_no_convergence_within_max_iter():
    model, a, x, y = quadratic([1.0, 0.99, 0.98, 0.5])
    res = hessian_top_eigenvalue(model, identity_loss, x, y, tol=1e-14, max_iter=3)
    assert not res.converged and res.iterations == 3


def test_trace_of_a_quadratic_within_its_standard_error():
    model, a, x, y = quadratic([5.0, 3.0, 2.0, 1.0, 0.5, 0.1, -0.3, -1.0])
    res = hessian_trace(model, identity_loss, x, y, samples=400, seed=1)
    assert res.samples == 400 and res.stderr > 0
    assert abs(res.value - np.trace(a)) < 4 * res.stderr


def test_trace_is_exact_for_a_diagonal_hessian():
    # With Rademacher z, z^T D z = sum_i D_ii z_i^2 = trace(D) for every sample.
    d = np.array([3.0, -1.0, 0.25, 7.0, 2.0])
    model = Quadratic(np.diag(d), np.ones(5))
    res = hessian_trace(model, identity_loss, torch.zeros(1, 1), torch.zeros(1), samples=5)
    assert res.value == pytest.approx(d.sum(), abs=1e-12)
    assert res.stderr == pytest.approx(0.0, abs=1e-12)


def test_a_loss_linear_in_the_parameters_has_a_zero_hessian():
    net = nn.Linear(3, 1, bias=False).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    res = hessian_top_eigenvalue(net, lambda out, y: out.mean(), x, None)
    assert res.value == 0.0 and res.converged
    assert hessian_trace(net, lambda out, y: out.mean(), x, None, samples=3).value == 0.0


def test_batches_give_the_same_values_as_the_whole_set():
    net, x, y = relu_net()
    loss = nn.CrossEntropyLoss()
    for f, opts in [(hessian_top_eigenvalue, dict(tol=1e-6, max_iter=200)), (hessian_trace, dict(samples=3)),
                    (sam_sharpness, dict(rho=0.1, steps=5)), (adaptive_sharpness, dict(rho=0.1, steps=5)),
                    (random_sharpness, dict(rho=0.1, samples=5))]:
        whole, chunked = f(net, loss, x, y, **opts), f(net, loss, x, y, batch_size=16, **opts)
        assert chunked.value == pytest.approx(whole.value, rel=1e-6, abs=1e-12), f.__name__
        assert chunked.loss == pytest.approx(whole.loss, rel=1e-12), f.__name__


# ------------------------------------------------------------------------------------------- worst and average case

class TwoParameters(nn.Module):
    """prediction tanh(w0 x) + w1 x^2, squared error: a smooth non-convex loss of two parameters."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(self.w[0] * x) + self.w[1] * x ** 2


def two_parameter_loss_numpy(w0, w1, x, y):
    """The same loss in numpy, for every (w0, w1) of a grid at once."""
    pred = np.tanh(w0[..., None] * x) + w1[..., None] * x ** 2
    return ((pred - y) ** 2).mean(-1)


@pytest.mark.parametrize("w, rho", [((0.8, -0.3), 0.5), ((2.0, 0.4), 1.0), ((-0.5, 0.1), 0.2)])
def test_sam_sharpness_matches_a_grid_search_over_the_disc(w, rho):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 60)
    y = np.sin(1.5 * x) + 0.1 * rng.standard_normal(60)
    model = TwoParameters(w)
    res = sam_sharpness(model, nn.MSELoss(), torch.tensor(x), torch.tensor(y), rho=rho, steps=100)

    angles = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    radii = np.linspace(0, rho, 401)
    e0 = radii[:, None] * np.cos(angles)[None, :]
    e1 = radii[:, None] * np.sin(angles)[None, :]
    base = two_parameter_loss_numpy(np.array(w[0]), np.array(w[1]), x, y)
    grid = two_parameter_loss_numpy(w[0] + e0, w[1] + e1, x, y) - base
    assert res.loss == pytest.approx(float(base), rel=1e-12)
    assert res.multi_step == res.value
    assert res.one_step <= res.multi_step
    # The ascent's value is the loss at a feasible point: at most the true maximum, which the grid approaches
    # from below within its resolution.
    assert res.multi_step == pytest.approx(grid.max(), rel=1e-4, abs=1e-8)
    assert res.multi_step <= grid.max() + 1e-4 * abs(grid.max())


@pytest.mark.parametrize("w, rho, eta", [((0.8, -0.3), 0.5, 0.01), ((2.0, 0.4), 0.3, 0.0)])
def test_adaptive_sharpness_matches_a_grid_search_over_the_rescaled_disc(w, rho, eta):
    # The feasible set is e = T u with ||u|| <= rho, T = diag(|w| + eta): an ellipse in e.
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 60)
    y = np.sin(1.5 * x) + 0.1 * rng.standard_normal(60)
    res = adaptive_sharpness(TwoParameters(w), nn.MSELoss(), torch.tensor(x), torch.tensor(y), rho=rho, eta=eta,
                             steps=100)
    angles = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    radii = np.linspace(0, rho, 401)
    t0, t1 = abs(w[0]) + eta, abs(w[1]) + eta
    e0 = t0 * radii[:, None] * np.cos(angles)[None, :]
    e1 = t1 * radii[:, None] * np.sin(angles)[None, :]
    base = two_parameter_loss_numpy(np.array(w[0]), np.array(w[1]), x, y)
    grid = two_parameter_loss_numpy(w[0] + e0, w[1] + e1, x, y) - base
    assert res.one_step <= res.multi_step == res.value
    assert res.multi_step == pytest.approx(grid.max(), rel=1e-4, abs=1e-8)


def test_adaptive_one_step_is_asams_ascent_step():
    model, a, x, y = quadratic([4.0, 1.0, 0.5])
    w = model.w.detach().numpy()
    g, t = a @ w, np.abs(w) + 0.1
    e = 0.3 * t ** 2 * g / np.linalg.norm(t * g)
    expected = 0.5 * (w + e) @ a @ (w + e) - 0.5 * w @ a @ w
    res = adaptive_sharpness(model, identity_loss, x, y, rho=0.3, eta=0.1, steps=1)
    assert res.one_step == pytest.approx(expected, rel=1e-10)


def test_sam_one_step_is_the_loss_at_rho_times_the_normalised_gradient():
    model, a, x, y = quadratic([4.0, 1.0, 0.5])
    w = model.w.detach().numpy()
    g = a @ w
    e = 0.3 * g / np.linalg.norm(g)
    expected = 0.5 * (w + e) @ a @ (w + e) - 0.5 * w @ a @ w
    assert sam_sharpness(model, identity_loss, x, y, rho=0.3, steps=1).one_step == pytest.approx(expected, rel=1e-10)


def test_sam_sharpness_at_a_stationary_point_starts_from_a_random_direction():
    # At w = 0 the gradient vanishes and the one-step ascent is undefined (reported 0); the maximum of
    # 0.5 e^T A e over ||e|| <= rho is 0.5 rho^2 lambda_max.
    a = symmetric([3.0, 1.0, 0.5, -2.0])
    model = Quadratic(a, np.zeros(4))
    res = sam_sharpness(model, identity_loss, torch.zeros(1, 1), torch.zeros(1), rho=0.5, steps=200)
    assert res.one_step == 0.0
    assert res.multi_step == pytest.approx(0.5 * 0.25 * 3.0, rel=1e-4)


def test_random_sharpness_of_a_quadratic_is_rho_squared_trace_over_twice_the_dimension():
    # For e uniform on the sphere of radius rho in d dimensions: E g.e = 0 and E e^T A e = rho^2 trace(A) / d.
    model, a, x, y = quadratic([5.0, 3.0, 2.0, 1.0, 0.5, 0.1, -0.3, -1.0])
    rho = 0.2
    res = random_sharpness(model, identity_loss, x, y, rho=rho, samples=2000)
    assert res.samples == 2000 and res.rho == rho
    assert abs(res.value - rho ** 2 * np.trace(a) / (2 * len(a))) < 4 * res.stderr


# ------------------------------------------------------------------------------------------- Dinh et al.

def rescaled(net, a):
    """The same function: the first layer (weights and bias) times a, the next layer's weights times 1/a."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[0].weight.mul_(a)
        out[0].bias.mul_(a)
        out[2].weight.div_(a)
    return out


def test_rescaling_changes_plain_sharpness_but_not_adaptive_sharpness():
    net, x, y = relu_net()
    other = rescaled(net, 5.0)
    loss = nn.CrossEntropyLoss()
    torch.testing.assert_close(other(x), net(x), rtol=1e-12, atol=1e-12)

    adaptive = [adaptive_sharpness(m, loss, x, y, rho=0.05, eta=0.0, steps=10) for m in (net, other)]
    assert adaptive[1].one_step == pytest.approx(adaptive[0].one_step, rel=1e-6)
    assert adaptive[1].value == pytest.approx(adaptive[0].value, rel=1e-6)
    assert adaptive[0].value > 0

    sam = [sam_sharpness(m, loss, x, y, rho=0.05, steps=10).value for m in (net, other)]
    top = [hessian_top_eigenvalue(m, loss, x, y, tol=1e-6, max_iter=500).value for m in (net, other)]
    assert abs(sam[1] - sam[0]) > 0.1 * sam[0]
    assert abs(top[1] - top[0]) > 0.1 * top[0]


def test_adaptive_sharpness_with_a_small_eta_is_nearly_invariant():
    net, x, y = relu_net()
    loss = nn.CrossEntropyLoss()
    values = [adaptive_sharpness(m, loss, x, y, rho=0.05, eta=1e-4, steps=10).value
              for m in (net, rescaled(net, 2.0))]
    assert values[1] == pytest.approx(values[0], rel=1e-2)


# ------------------------------------------------------------------------------------------- the model is untouched

class Jitter(nn.Module):
    """Draws from torch's global RNG in every forward, in any mode (its contribution is zero)."""

    def forward(self, x):
        return x + 0.0 * torch.randn_like(x)


def busy_model():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), Jitter(), nn.Linear(8, 3))
    net.train()
    net[3].eval()  # modes differ between modules: each must come back as it was
    net(torch.randn(32, 5)).sum().backward()  # running statistics and grads that are not trivial
    net[5].bias.grad = None
    return net


def snapshot(net):
    return {
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()},
        "grad_ids": {n: id(p.grad) for n, p in net.named_parameters()},
        "modes": [m.training for m in net.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_same(before, after):
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        b, a = before["state"][k], after["state"][k]
        assert b.dtype == a.dtype and torch.equal(b.view(torch.uint8) if b.dtype != torch.int64 else b,
                                                  a.view(torch.uint8) if a.dtype != torch.int64 else a), k
    for n, g in before["grads"].items():
        assert (g is None) == (after["grads"][n] is None), n
        if g is not None:
            assert torch.equal(g, after["grads"][n]), n
    assert before["grad_ids"] == after["grad_ids"]
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])


MEASURES = [
    (hessian_top_eigenvalue, dict(max_iter=5)),
    (hessian_trace, dict(samples=3)),
    (sam_sharpness, dict(rho=0.1, steps=3)),
    (adaptive_sharpness, dict(rho=0.1, steps=3)),
    (random_sharpness, dict(rho=0.1, samples=3)),
]
IDS = [f.__name__ for f, _ in MEASURES]


@pytest.mark.parametrize("measure, options", MEASURES, ids=IDS)
def test_model_grads_modes_and_global_rng_are_untouched(measure, options):
    net = busy_model()
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    before = snapshot(net)
    measure(net, nn.CrossEntropyLoss(), x, y, **options)
    assert_same(before, snapshot(net))


@pytest.mark.parametrize("measure, options", MEASURES, ids=IDS)
def test_model_is_untouched_after_an_error(measure, options):
    net = busy_model()
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    calls = []

    def failing_loss(out, target):
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("loss failed")
        return nn.functional.cross_entropy(out, target)

    before = snapshot(net)
    with pytest.raises(KeyError, match="loss failed"):
        measure(net, failing_loss, x, y, **options)
    assert_same(before, snapshot(net))


@pytest.mark.parametrize("measure, options", MEASURES, ids=IDS)
def test_deterministic_for_a_seed(measure, options):
    net, x, y = relu_net()
    loss = nn.CrossEntropyLoss()
    assert measure(net, loss, x, y, seed=7, **options) == measure(net, loss, x, y, seed=7, **options)


@pytest.mark.parametrize("measure, options", [(hessian_trace, dict(samples=3)),
                                              (random_sharpness, dict(rho=0.1, samples=3))])
def test_the_seed_draws_the_vectors(measure, options):
    net, x, y = relu_net()
    loss = nn.CrossEntropyLoss()
    assert measure(net, loss, x, y, seed=1, **options).value != measure(net, loss, x, y, seed=2, **options).value


# ------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("rho", [0, -0.1, math.nan, math.inf, "0.1", True])
@pytest.mark.parametrize("measure", [sam_sharpness, adaptive_sharpness, random_sharpness])
def test_rho_must_be_positive(measure, rho):
    net, x, y = relu_net()
    with pytest.raises(ValueError, match="rho must be"):
        measure(net, nn.CrossEntropyLoss(), x, y, rho=rho)


@pytest.mark.parametrize("measure, options", MEASURES, ids=IDS)
def test_loss_must_be_a_scalar(measure, options):
    net, x, y = relu_net()
    with pytest.raises(ValueError, match=r"scalar .*shape \[64\].*reduction='mean'"):
        measure(net, nn.CrossEntropyLoss(reduction="none"), x, y, **options)


@pytest.mark.parametrize("measure, options", MEASURES, ids=IDS)
def test_model_needs_trainable_parameters(measure, options):
    net, x, y = relu_net()
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure(net, nn.CrossEntropyLoss(), x, y, **options)


def test_loss_must_depend_on_the_parameters():
    net, x, y = relu_net()
    with pytest.raises(ValueError, match="does not depend on the model's trainable parameters"):
        hessian_trace(net, lambda out, target: out.detach().sum() * 0, x, y)


@pytest.mark.parametrize("options, match", [(dict(samples=1), "samples must be an integer >= 2"),
                                            (dict(seed=0.5), "seed must be an integer"),
                                            (dict(batch_size=0), "batch_size must be an integer >= 1")])
def test_bad_counts(options, match):
    net, x, y = relu_net()
    with pytest.raises(ValueError, match=match):
        hessian_trace(net, nn.CrossEntropyLoss(), x, y, **options)


def test_bad_options():
    net, x, y = relu_net()
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="tol must be > 0"):
        hessian_top_eigenvalue(net, loss, x, y, tol=0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        hessian_top_eigenvalue(net, loss, x, y, max_iter=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sam_sharpness(net, loss, x, y, rho=0.1, steps=0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        adaptive_sharpness(net, loss, x, y, rho=0.1, eta=-1)
    with pytest.raises(ValueError, match="same length"):
        random_sharpness(net, loss, x, y[:10], rho=0.1, batch_size=8)


class OnceTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        out = a.tanh()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out ** 2)


class OnceDifferentiable(nn.Module):
    def forward(self, x):
        return OnceTanh.apply(x)


class InPlace(nn.Module):
    def forward(self, x):
        return x.mul_(2)


def test_hessian_vector_products_name_a_layer_without_a_double_backward():
    net = nn.Sequential(nn.Linear(4, 6), OnceDifferentiable(), nn.Linear(6, 3)).double()
    _, x, y = relu_net()
    for measure, options in MEASURES[:2]:
        with pytest.raises(RuntimeError, match=r"layer '1' \(OnceDifferentiable\).*twice.*once_differentiable"):
            measure(net, nn.CrossEntropyLoss(), x, y, **options)
    # First-order measures need one backward only, which the layer has.
    assert sam_sharpness(net, nn.CrossEntropyLoss(), x, y, rho=0.1, steps=2).value > 0


def test_in_place_operation_names_the_layer_whose_output_it_modified():
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), InPlace(), nn.Linear(6, 3)).double()
    _, x, y = relu_net()
    with pytest.raises(RuntimeError, match=r"Hessian-vector products failed at layer '1' \(Tanh\).*in-place"):
        hessian_top_eigenvalue(net, nn.CrossEntropyLoss(), x, y)
    with pytest.raises(RuntimeError, match=r"gradient of the loss failed at layer '1' \(Tanh\)"):
        sam_sharpness(net, nn.CrossEntropyLoss(), x, y, rho=0.1)
