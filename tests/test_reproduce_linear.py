"""The linear-network reproductions: their closed forms against independent computations, and a quick run."""
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402
import reproduce_linear as lin  # noqa: E402


def _gauss_mi_numpy(cov, ia, ib):
    """I(a; b) in bits of a jointly Gaussian vector with covariance ``cov``, by entropies (numpy)."""
    sub = lambda idx: np.linalg.slogdet(cov[np.ix_(idx, idx)])[1]  # noqa: E731
    return 0.5 * (sub(ia) + sub(ib) - sub(ia + ib)) / math.log(2)


def test_closed_forms_equal_the_joint_covariance_route():
    g = torch.Generator().manual_seed(0)
    d_r, d_i, h, noise_var, out_var = 3, 4, 2, 0.05, 0.3
    d = d_r + d_i
    w = torch.randn(1, h, d, generator=g, dtype=torch.float64)
    w0 = torch.randn(1, d, generator=g, dtype=torch.float64)
    # The joint covariance of (x, xi, e) -> (x, T, Y), built from the linear maps alone.
    wn, w0n = w[0].numpy(), w0[0].numpy()
    a = np.zeros((d + h + 1, d + h + 1))  # (x, T, Y) = A (x, xi, e)
    a[:d, :d] = np.eye(d)
    a[d:d + h, :d], a[d:d + h, d:d + h] = wn, np.eye(h)
    a[-1, :d], a[-1, -1] = w0n, 1.0
    src = np.diag(np.r_[np.ones(d), noise_var * np.ones(h), out_var])
    cov = a @ src @ a.T
    xs, ts, y = list(range(d)), list(range(d, d + h)), [d + h]
    assert math.isclose(lin.ixt_closed(w, noise_var).item(), _gauss_mi_numpy(cov, xs, ts), rel_tol=1e-10)
    assert math.isclose(lin.ity_closed(w, w0, noise_var, out_var).item(), _gauss_mi_numpy(cov, ts, y),
                        rel_tol=1e-10)
    rel, irr = lin.split_closed(w, d_r, noise_var)
    assert math.isclose(rel.item(), _gauss_mi_numpy(cov, list(range(d_r)), ts), rel_tol=1e-10)
    assert math.isclose(irr.item(), _gauss_mi_numpy(cov, list(range(d_r, d)), ts), rel_tol=1e-10)


def test_gradient_steps_equal_autograd():
    """One step of each trainer's moment-based gradient equals torch's autograd on the sampled loss."""
    kw = dict(seeds=2, epochs=1, lr=0.1, init=0.5, seed=3)
    out = lin.train_linear(d=5, hidden=4, samples=7, out_var=0.2, record=dict(epochs=[0], noise_var=0.1), **kw)
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order, as train_linear
    dt = torch.float64
    w0 = torch.randn(2, 5, generator=g, dtype=dt) / math.sqrt(5)
    x = torch.randn(2, 7, 5, generator=g, dtype=dt)
    y = (x @ w0.unsqueeze(-1)).squeeze(-1) + math.sqrt(0.2) * torch.randn(2, 7, generator=g, dtype=dt)
    w1 = (0.5 * torch.randn(2, 4, 5, generator=g, dtype=dt) / math.sqrt(5)).requires_grad_()
    w2 = (0.5 * torch.randn(2, 4, generator=g, dtype=dt) / 2).requires_grad_()
    loss = (((x @ w1.transpose(-1, -2)) @ w2.unsqueeze(-1)).squeeze(-1) - y).pow(2).mean(-1).sum()
    loss.backward()
    torch.testing.assert_close(out["w1"], (w1 - 0.1 * w1.grad).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["w0"], w0)

    out = lin.train_split(d_r=2, d_i=3, outputs=2, samples=9, out_var=0.1, record=dict(epochs=[0], noise_var=0.1),
                          **kw)
    g = torch.Generator().manual_seed(3)
    w0 = torch.zeros(2, 2, 5, dtype=dt)
    w0[..., :2] = torch.randn(2, 2, 2, generator=g, dtype=dt) / math.sqrt(2)
    x = torch.randn(2, 9, 5, generator=g, dtype=dt)
    y = x @ w0.transpose(-1, -2) + math.sqrt(0.1) * torch.randn(2, 9, 2, generator=g, dtype=dt)
    w = (0.5 * torch.randn(2, 2, 5, generator=g, dtype=dt) / math.sqrt(5)).requires_grad_()
    (x @ w.transpose(-1, -2) - y).pow(2).sum(-1).mean(-1).sum().backward()
    torch.testing.assert_close(out["w"], (w - 0.1 * w.grad).detach(), rtol=1e-12, atol=1e-12)


def test_quick_sections_write_their_blocks(tmp_path):
    doc = tmp_path / "reproductions.md"
    out = reproduce.main(["--only", "linear", "--only", "relevant", "--quick", "--quiet", "--out",
                          str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"), "--doc", str(doc)])
    assert list(out) == ["linear", "relevant"]
    text = doc.read_text()
    for key in ("linear", "relevant"):
        start, end = reproduce.markers(key)
        assert start in text and end in text
    assert (tmp_path / "fig" / "linear-teacher-student.png").stat().st_size > 0
    assert (tmp_path / "fig" / "relevant-irrelevant.png").stat().st_size > 0
    res = out["relevant"]
    # the irrelevant information falls and the relevant rises over the run, in every seed
    assert (res["irr"][:, -1] < res["irr"][:, 0]).all() and (res["rel"][:, -1] > res["rel"][:, 0]).all()
    for r in out["linear"].values():
        assert np.all(r["ixt"] >= 0) and np.all(r["ity"] >= 0) and np.all(r["test"] > 0)
