"""SAM and ASAM (infoplane.optim.SAM) against hand-written updates on plain tensors."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from infoplane.optim import SAM

DT = torch.float64


def make_data(n=24, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randint(0, k, (n,), generator=g)


def make_model(seed=1, d=5, h=7, k=3, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, k)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    return model


def loss_of(weights, x, y):
    """The model's loss written on plain tensors: [W1, b1, W2, b2]."""
    w1, b1, w2, b2 = weights
    return F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)


def grad_at(weights, x, y):
    leaves = [w.detach().clone().requires_grad_(True) for w in weights]
    return [g.detach() for g in torch.autograd.grad(loss_of(leaves, x, y), leaves)]


def perturbation(weights, grads, rho, adaptive=False, eta=0.01):
    if adaptive:
        t = [w.abs() + eta for w in weights]
        norm = math.sqrt(sum(float(((ti * g) ** 2).sum()) for ti, g in zip(t, grads)))
        return [rho * ti * ti * g / norm for ti, g in zip(t, grads)]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    return [rho * g / norm for g in grads]


def closure_for(model, optimizer, x, y):
    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def weights_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_close(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("backward_first", [False, True])
def test_one_sgd_step_matches_the_hand_written_update(adaptive, backward_first):
    x, y = make_data()
    model = make_model()
    w = weights_of(model)
    rho, lr = (0.5, 0.1) if adaptive else (0.05, 0.1)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    closure = closure_for(model, opt, x, y)
    if backward_first:  # the usual SAM loop: your own backward at w, then step(closure)
        closure()
        assert opt.step(closure) is None
    else:  # closure only: step computes the gradient at w itself and returns the loss there
        loss = opt.step(closure)
        assert float(loss.detach()) == pytest.approx(float(loss_of(w, x, y)), rel=1e-14)

    g = grad_at(w, x, y)
    e = perturbation(w, g, rho, adaptive)
    g_sharp = grad_at([wi + ei for wi, ei in zip(w, e)], x, y)
    assert_close(weights_of(model), [wi - lr * gi for wi, gi in zip(w, g_sharp)])
    assert all(p.grad is None for p in model.parameters())  # the gradients at w + e are not left behind


@pytest.mark.parametrize("adaptive", [False, True])
def test_two_adam_steps_match_the_hand_written_update(adaptive):
    x, y = make_data(seed=3)
    model = make_model(seed=4)
    w = weights_of(model)
    rho, lr, (b1, b2), eps = 0.1, 0.01, (0.9, 0.999), 1e-8
    opt = SAM(model.parameters(), torch.optim.Adam, rho=rho, adaptive=adaptive, eta=0.05, lr=lr)
    for _ in range(2):
        opt.step(closure_for(model, opt, x, y))

    m = [torch.zeros_like(wi) for wi in w]
    v = [torch.zeros_like(wi) for wi in w]
    for t in (1, 2):
        g = grad_at(w, x, y)
        e = perturbation(w, g, rho, adaptive, eta=0.05)
        gs = grad_at([wi + ei for wi, ei in zip(w, e)], x, y)
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, gs)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, gs)]
        w = [wi - lr * (mi / (1 - b1 ** t)) / ((vi / (1 - b2 ** t)).sqrt() + eps) for wi, mi, vi in zip(w, m, v)]
    assert_close(weights_of(model), w)


def test_first_step_second_step_equal_step():
    x, y = make_data()
    a, b = make_model(), make_model()
    opt_a = SAM(a.parameters(), torch.optim.SGD, lr=0.2, momentum=0.9)
    opt_b = SAM(b.parameters(), torch.optim.SGD, lr=0.2, momentum=0.9)
    for _ in range(3):
        opt_a.step(closure_for(a, opt_a, x, y))
        F.cross_entropy(b(x), y).backward()
        opt_b.first_step(zero_grad=True)
        F.cross_entropy(b(x), y).backward()
        opt_b.second_step(zero_grad=True)
    assert_close(weights_of(a), weights_of(b))


def test_an_optimizer_instance_and_float32_parameters():
    x, y = make_data()
    x = x.float()
    model = make_model(dtype=torch.float32)
    w = [wi.double() for wi in weights_of(model)]
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SAM(model.parameters(), base, rho=0.05)
    opt.step(closure_for(model, opt, x, y))
    g = grad_at(w, x.double(), y)
    e = perturbation(w, g, 0.05)
    g_sharp = grad_at([wi + ei for wi, ei in zip(w, e)], x.double(), y)
    for got, want in zip(weights_of(model), [wi - 0.1 * gi for wi, gi in zip(w, g_sharp)]):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_frozen_layer_is_untouched_and_left_out_of_the_norm():
    x, y = make_data()
    model = make_model()
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen = weights_of(model[0])
    twin = make_model()  # the same weights, with SAM given only the trainable layer
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    opt_twin = SAM(twin[2].parameters(), torch.optim.SGD, lr=0.1)
    for _ in range(3):
        opt.step(closure_for(model, opt, x, y))
        opt_twin.step(closure_for(twin, opt_twin, x, y))
    for a, b in zip(weights_of(model[0]), frozen):
        assert torch.equal(a, b)
    assert_close(weights_of(model[2]), weights_of(twin[2]))


@pytest.mark.parametrize("batch_size", [1, 24])
def test_batch_size_one_and_full_batch(batch_size):
    x, y = make_data()
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.05)
    before = F.cross_entropy(model(x), y).item()
    for _ in range(5):
        for i in range(0, len(x), batch_size):
            opt.step(closure_for(model, opt, x[i:i + batch_size], y[i:i + batch_size]))
    after = F.cross_entropy(model(x), y).item()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert after < before


@pytest.mark.parametrize("adaptive", [False, True])
def test_training_a_tiny_model_decreases_the_loss(adaptive):
    x, y = make_data(n=64)
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, adaptive=adaptive, lr=0.3, momentum=0.9)
    losses = []
    for _ in range(60):
        closure = closure_for(model, opt, x, y)
        loss = closure()
        losses.append(loss.item())
        opt.step(closure)
    assert losses[-1] < 0.5 * losses[0]


def test_zero_gradient_means_no_perturbation():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    w = weights_of(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.first_step()
    assert_close(weights_of(model), w)
    opt.second_step()
    assert_close(weights_of(model), w)


def test_state_dict_round_trip_continues_identically():
    x, y = make_data()
    a = make_model()
    opt_a = SAM(a.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    for _ in range(2):
        opt_a.step(closure_for(a, opt_a, x, y))
    saved = copy.deepcopy(opt_a.state_dict())
    assert saved["state"] and all("momentum_buffer" in s for s in saved["state"].values())
    assert saved["param_groups"][0]["rho"] == 0.1

    b = make_model()
    b.load_state_dict(a.state_dict())
    opt_b = SAM(b.parameters(), torch.optim.SGD, lr=0.5)  # settings come from the state dict
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups is opt_b.base_optimizer.param_groups
    assert opt_b.param_groups[0]["lr"] == 0.1 and opt_b.param_groups[0]["rho"] == 0.1
    for _ in range(2):
        opt_a.step(closure_for(a, opt_a, x, y))
        opt_b.step(closure_for(b, opt_b, x, y))
    assert_close(weights_of(a), weights_of(b))


def test_scheduler_and_deepcopy_act_on_the_base_optimizer():
    x, y = make_data()
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(closure_for(model, opt, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    clone = copy.deepcopy(opt)
    assert clone.param_groups is clone.base_optimizer.param_groups


def test_scheduler_on_the_base_optimizer_for_first_step_loops(recwarn):
    x, y = make_data()
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt.base_optimizer, step_size=1, gamma=0.5)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]


def test_param_groups_carry_their_own_rho():
    x, y = make_data()
    model = make_model()
    opt = SAM([{"params": model[0].parameters(), "rho": 0.2}, {"params": model[2].parameters()}],
              torch.optim.SGD, lr=0.1)
    assert [g["rho"] for g in opt.param_groups] == [0.2, 0.05]
    w = weights_of(model)
    opt.step(closure_for(model, opt, x, y))
    g = grad_at(w, x, y)
    norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
    e = [r * gi / norm for r, gi in zip([0.2, 0.2, 0.05, 0.05], g)]
    g_sharp = grad_at([wi + ei for wi, ei in zip(w, e)], x, y)
    assert_close(weights_of(model), [wi - 0.1 * gi for wi, gi in zip(w, g_sharp)])


def test_gradient_scaler_with_restore():
    x, y = make_data()
    x = x.float()
    a, b = make_model(dtype=torch.float32), make_model(dtype=torch.float32)
    opt_a = SAM(a.parameters(), torch.optim.SGD, lr=0.1)
    opt_b = SAM(b.parameters(), torch.optim.SGD, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt_a.step(closure_for(a, opt_a, x, y))
    scaler.scale(F.cross_entropy(b(x), y)).backward()
    opt_b.first_step(zero_grad=True)
    scaler.scale(F.cross_entropy(b(x), y)).backward()
    opt_b.restore()
    scaler.step(opt_b.base_optimizer)
    scaler.update()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_errors():
    x, y = make_data()
    model = make_model()
    params = list(model.parameters())
    for rho in (0, -0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="rho must be a finite number > 0"):
            SAM(params, torch.optim.SGD, rho=rho, lr=0.1)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        SAM(params, torch.optim.SGD, adaptive=True, eta=-0.01, lr=0.1)
    with pytest.raises(ValueError, match="rho of parameter group 0"):
        SAM([{"params": params, "rho": -1.0}], torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="adaptive must be True"):
        SAM(params, torch.optim.SGD, adaptive="yes", lr=0.1)
    with pytest.raises(TypeError, match="itself a SAM"):
        SAM(params, SAM, lr=0.1)
    with pytest.raises(TypeError, match="torch.optim.Optimizer class"):
        SAM(params, "sgd", lr=0.1)
    with pytest.raises(TypeError, match="already constructed"):
        SAM(params, torch.optim.SGD(params, lr=0.1), lr=0.1)
    with pytest.raises(ValueError, match="same parameters"):
        SAM(params, torch.optim.SGD(params[:2], lr=0.1))

    opt = SAM(params, torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="not perturbed"):
        opt.second_step()

    w = weights_of(model)

    def forward_only():
        opt.zero_grad()
        return F.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="did not compute any gradient"):
        opt.step(forward_only)  # nothing to start from
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="did not compute any gradient"):
        opt.step(forward_only)  # gradient at w given, none at w + e
    assert_close(weights_of(model), w)  # back at w, no step taken

    def failing():
        raise KeyError("boom")

    F.cross_entropy(model(x), y).backward()
    with pytest.raises(KeyError, match="boom"):
        opt.step(failing)
    assert_close(weights_of(model), w)

    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    with pytest.raises(RuntimeError, match="first_step was called again"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="no gradient at the perturbed weights"):
        opt.second_step()
    assert_close(weights_of(model), w)
