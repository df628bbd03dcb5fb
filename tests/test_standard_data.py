"""MNIST, Fashion-MNIST and CIFAR-10 from files written here in their exact distribution formats (no network)."""
import gzip
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from infoplane import data
from infoplane.data import standard


def idx_bytes(array):
    """IDX as specified: two zero bytes, the type code (0x08 = uint8), the rank, big-endian sizes, the data."""
    a = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", n) for n in a.shape) + a.tobytes()


def write_mnist(folder, n_train=30, n_test=12, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr, rank in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{rank}-ubyte"
            blob = idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
        parts[prefix] = (images, labels)
    return parts


def cifar_batch(n, rng):
    return {b"batch_label": b"x", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


def write_cifar_archive(path, n=4, seed=0):
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": cifar_batch(n, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n, rng)
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return batches


@pytest.fixture
def checksums_of(monkeypatch):
    """Make the published checksums those of the small files a test wrote (the files cannot be the real ones)."""
    def apply(name, folder):
        spec = standard.STANDARD[name]
        files = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in spec.files}
        monkeypatch.setitem(standard.STANDARD, name, standard.Standard(spec.name, files, spec.mirrors,
                                                                    spec.torchvision_folder, spec.classes, spec.kind))
    return apply


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_read_back_exactly(tmp_path, checksums_of, name):
    parts = write_mnist(tmp_path / name)
    checksums_of(name, tmp_path / name)
    x, y = data.load(name, root=tmp_path)
    expected_x = np.concatenate([parts["train"][0], parts["t10k"][0]]).reshape(42, 784) / 255.0
    assert x.dtype == torch.float32 and x.shape == (42, 784) and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), expected_x, rtol=0, atol=1e-7)
    assert y.tolist() == np.concatenate([parts["train"][1], parts["t10k"][1]]).tolist()
    xt, yt = standard.load_standard(name, root=tmp_path, split="test", dtype=torch.float64)
    assert xt.dtype == torch.float64 and torch.equal(yt, y[30:])
    assert torch.equal(xt, torch.from_numpy(parts["t10k"][0].reshape(12, 784) / 255.0))


def test_uncompressed_files_in_torchvision_layout_are_found(tmp_path):
    parts = write_mnist(tmp_path / "MNIST" / "raw", gz=False)
    x, y = data.load("mnist", root=tmp_path)
    assert x.shape == (42, 784) and y.tolist()[:30] == parts["train"][1].tolist()


def test_a_damaged_file_is_refused_with_the_fix(tmp_path, checksums_of):
    write_mnist(tmp_path / "mnist")
    checksums_of("mnist", tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8))
    with pytest.raises(ValueError, match="MD5 .* is not the published .* delete it"):
        data.load("mnist", root=tmp_path)
    (tmp_path / "x.idx").write_bytes(idx_bytes(np.zeros((3, 2)))[:-1])
    with pytest.raises(ValueError, match="truncated or damaged"):
        standard.read_idx(tmp_path / "x.idx")
    (tmp_path / "y.idx").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        standard.read_idx(tmp_path / "y.idx")


def test_missing_files_say_where_to_put_them_and_nothing_is_downloaded(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load() tried the network without download=True")

    monkeypatch.setattr(standard.urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError, match=r"not there .*Put the published files into .*download=True"):
        data.load("fashion-mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        data.load("cifar10", root=tmp_path)


def test_cifar_archive_and_folder_read_back_exactly(tmp_path, checksums_of):
    (tmp_path / "cifar10").mkdir()
    batches = write_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    checksums_of("cifar10", tmp_path / "cifar10")
    x, y = data.load("cifar10", root=tmp_path)
    order = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert x.shape == (24, 3072) and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), np.concatenate([batches[b][b"data"] for b in order]) / 255.0, atol=1e-7)
    assert y.tolist() == sum((batches[b][b"labels"] for b in order), [])
    # the extracted folder gives the same
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    x2, y2 = data.load("cifar10", root=tmp_path / "extracted")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xt, yt = standard.load_standard("cifar10", root=tmp_path / "extracted", split="test")
    assert torch.equal(yt, y[20:])


def test_a_pickle_that_is_not_a_batch_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch .*builtins.print"):
        data.load("cifar10", root=tmp_path)


def test_download_fetches_checks_and_keeps_only_good_files(tmp_path, monkeypatch, checksums_of):
    mirror = tmp_path / "mirror"
    write_mnist(mirror)
    checksums_of("mnist", mirror)
    spec = standard.STANDARD["mnist"]
    monkeypatch.setitem(standard.STANDARD, "mnist", standard.Standard(
        spec.name, spec.files, (mirror.as_uri() + "/",), spec.torchvision_folder, spec.classes, spec.kind))
    x, y = data.load("mnist", root=tmp_path / "cache", download=True)
    assert x.shape == (42, 784)
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(spec.files)
    # a mirror serving a damaged file: nothing is kept, the error names the file and the fix
    bad = dict(spec.files, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    monkeypatch.setitem(standard.STANDARD, "mnist", standard.Standard(
        spec.name, bad, (mirror.as_uri() + "/",), spec.torchvision_folder, spec.classes, spec.kind))
    with pytest.raises(OSError, match="could not download t10k-labels-idx1-ubyte.gz .*checksum"):
        standard.fetch("mnist", tmp_path / "other", progress=False)
    assert not (tmp_path / "other" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (tmp_path / "other" / "mnist").iterdir() if p.name.endswith(".part")]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown standard data set"):
        standard.load_standard("mnistt")
    with pytest.raises(ValueError, match="split must be one of"):
        standard.load_standard("mnist", split="val")
    with pytest.raises(ValueError, match="Unknown data set .*cifar10"):
        data.load("imagenet")


def test_cli_data_root_and_download(tmp_path, monkeypatch, checksums_of, capsys):
    import infoplane
    from infoplane.cli.main import main

    def no_network(*args, **kwargs):
        raise AssertionError("the command tried the network without --download")

    model = tmp_path / "mlp.py"
    model.write_text("from torch import nn\n\ndef build_model():\n"
                     "    return nn.Sequential(nn.Linear(784, 4), nn.Tanh(), nn.Linear(4, 10))\n")
    common = [str(model), "--data", "mnist", "--epochs", "1", "--quiet", "--no-plot"]
    mirror = tmp_path / "mirror"
    parts = write_mnist(mirror)
    checksums_of("mnist", mirror)
    # Offline and without the files: exit 2, naming the command line's flags.
    monkeypatch.setattr(standard.urllib.request, "urlopen", no_network)
    rc = main(["track", *common, "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "--data-root" in err and "--download" in err and str(tmp_path / "empty" / "mnist") in err
    # --download fetches into --data-root (from a mirror on disk here), then trains on the files.
    monkeypatch.undo()
    checksums_of("mnist", mirror)
    spec = standard.STANDARD["mnist"]
    monkeypatch.setitem(standard.STANDARD, "mnist", standard.Standard(
        spec.name, spec.files, (mirror.as_uri() + "/",), spec.torchvision_folder, spec.classes, spec.kind))
    rc = main(["track", *common, "--data-root", str(tmp_path / "cache"), "--download", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(spec.files)
    run = infoplane.load_run(tmp_path / "b" / "fraction-0.8")
    assert run.meta["data"] == "mnist" and run.n == len(parts["train"][1]) + len(parts["t10k"][1])
    # The flags belong to the standard sets.
    rc = main(["track", *common[:1], "--download", "--epochs", "1", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "--download" in err.splitlines()[0], err
