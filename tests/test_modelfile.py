"""Model-file loading: the contract, its error messages, and the shipped examples."""
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from infoplane.data.modelfile import ModelFile, ModelFileError, load_model_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path, text, name="model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BUILDER = """
    from torch import nn

    def build_model():
        return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
"""


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_build_model_file_exposes_names_and_defaults(tmp_path):
    path = write(tmp_path, BUILDER + """
    import torch
    layers = ["0", "2"]
    loss = nn.MSELoss()
    def optimizer(parameters):
        return torch.optim.SGD(parameters, lr=0.1)
    """, name="my-net.py")
    mf = load_model_file(path)
    assert isinstance(mf, ModelFile)
    assert mf.path == path.resolve() and mf.stem == "my-net"
    assert mf.layers == ["0", "2"] and isinstance(mf.loss, nn.MSELoss) and callable(mf.optimizer)
    assert mf.data is None and mf.train_step is None and mf.model is None
    assert mf.max_seeds is None


def test_build_is_seeded_reproducible_and_leaves_global_rng(tmp_path):
    mf = load_model_file(write(tmp_path, BUILDER))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, a_again = mf.build(0), mf.build(1), mf.build(0)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(a_again)))
    assert not all(torch.equal(x, y) for x, y in zip(params(a), params(b)))
    # Seed s means: torch.manual_seed(s), then build_model().
    torch.manual_seed(1)
    reference = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    assert all(torch.equal(x, y) for x, y in zip(params(b), params(reference)))


def test_single_model_file_allows_only_seed_zero_and_returns_fresh_copies(tmp_path):
    mf = load_model_file(write(tmp_path, """
        from torch import nn
        model = nn.Linear(3, 2)
    """))
    assert mf.max_seeds == 1 and mf.build_model is None
    first = mf.build(0)
    with torch.no_grad():
        first.weight.add_(1.0)  # training one copy must not leak into the next build
    second = mf.build(0)
    assert torch.equal(second.weight, mf.model.weight)
    assert not torch.equal(first.weight, second.weight)
    with pytest.raises(ModelFileError, match="only seed 0"):
        mf.build(1)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found") as info:
        load_model_file(tmp_path / "nope.py")
    assert isinstance(info.value, ValueError)
    assert "nope.py" in str(info.value)


def test_file_python_cannot_import(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    with pytest.raises(ModelFileError, match="model.txt.*save the model definition in a .py file"):
        load_model_file(path)


def test_import_error_names_exception_file_and_line(tmp_path):
    path = write(tmp_path, """
        import torch

        def helper():
            raise RuntimeError("width must be positive")

        helper()
    """)
    with pytest.raises(ModelFileError) as info:
        load_model_file(path)
    message = str(info.value)
    assert message.startswith("could not import model file model.py")
    assert "RuntimeError: width must be positive" in message
    # The innermost frame inside the file: the raise in helper(), line 5 of the dedented text.
    assert f"file {path.resolve()}, line 5" in message


def test_syntax_error_gives_line(tmp_path):
    path = write(tmp_path, "x = 1\ny = (\n")
    with pytest.raises(ModelFileError, match="SyntaxError") as info:
        load_model_file(path)
    assert "line 2" in str(info.value)


def test_missing_build_model_lists_defined_names(tmp_path):
    path = write(tmp_path, """
        from torch import nn
        def build():
            return nn.Linear(2, 2)
        width = 3
    """)
    with pytest.raises(ModelFileError) as info:
        load_model_file(path)
    message = str(info.value)
    assert message.splitlines()[0].startswith("model.py defines neither build_model nor model")
    assert "build, nn, width" in message


def test_build_model_returning_non_module(tmp_path):
    mf = load_model_file(write(tmp_path, "def build_model():\n    return [1, 2]\n"))
    with pytest.raises(ModelFileError, match="returned list, not a torch.nn.Module"):
        mf.build(0)


def test_build_model_raising_names_line(tmp_path):
    mf = load_model_file(write(tmp_path, "def build_model():\n    return 1 / 0\n"))
    with pytest.raises(ModelFileError, match="ZeroDivisionError") as info:
        mf.build(0)
    assert "line 2" in str(info.value)


def test_model_not_a_module(tmp_path):
    with pytest.raises(ModelFileError, match="model in model.py is a dict, not a torch.nn.Module"):
        load_model_file(write(tmp_path, "model = {'w': 1}\n"))


def test_optional_name_of_wrong_kind(tmp_path):
    with pytest.raises(ModelFileError, match="train_step in model.py must be callable"):
        load_model_file(write(tmp_path, textwrap.dedent(BUILDER) + "train_step = 3\n"))


def test_file_can_import_its_neighbours(tmp_path):
    write(tmp_path, "WIDTH = 5\n", name="shared_widths.py")
    path = write(tmp_path, """
        from torch import nn
        from shared_widths import WIDTH
        def build_model():
            return nn.Linear(WIDTH, 2)
    """)
    assert load_model_file(path).build(0).in_features == 5


@pytest.mark.parametrize("name, activation", [("tishby_tanh.py", nn.Tanh), ("tishby_relu.py", nn.ReLU)])
def test_tishby_examples(name, activation):
    mf = load_model_file(EXAMPLES / name)
    model = mf.build(0)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 10), (10, 7), (7, 5), (5, 4), (4, 3), (3, 2)]
    assert sum(isinstance(m, activation) for m in model) == 5 and isinstance(model[-1], nn.Linear)
    for m in linears:
        std = m.in_features ** -0.5
        assert torch.all(m.weight.abs() <= 2 * std) and torch.all(m.bias == 0)
    # 120 draws of the first layer: the sample std of a normal truncated at 2 std is 0.88 std.
    assert 0.6 < float(linears[0].weight.detach().std()) / 12 ** -0.5 < 1.15
    inputs = torch.randint(0, 2, (4096, 12)).float()
    assert model(inputs).shape == (4096, 2)


def test_digits_example_runs_on_its_data():
    mf = load_model_file(EXAMPLES / "digits_mlp.py")
    inputs, labels = mf.data()
    assert inputs.shape == (1797, 64) and labels.shape == (1797,)
    model = mf.build(3)
    assert model(inputs).shape == (1797, 10)


def test_mnist_example_builds_saxe_et_al_network_and_reads_the_cache(tmp_path, monkeypatch):
    mf = load_model_file(EXAMPLES / "mnist_saxe.py")
    model = mf.build(0)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 1024), (1024, 20), (20, 20), (20, 20),
                                                                  (20, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model) == 4
    opt = mf.optimizer(model.parameters())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 1e-3
    monkeypatch.setenv("INFOPLANE_DATA", str(tmp_path))  # an empty cache: the error says where to put the files
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mnist")):
        mf.data()
