"""Standard image data sets read from their distribution files: MNIST, Fashion-MNIST and CIFAR-10.

Nothing is downloaded unless asked (``download=True``): the files are looked for in a directory the user gives
(``root=``) or in the cache (``$INFOPLANE_DATA``, else ``$XDG_CACHE_HOME/infoplane/datasets``, else
``~/.cache/infoplane/datasets``), under the data set's own folder or in torchvision's layout
(``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``), so files fetched by torchvision are found too.
Downloads go through the standard mirrors with a progress bar and are checked against the published MD5
checksums before they are kept; a file that fails is deleted. The readers are small and exact: IDX (the MNIST
format, gzipped or not) and CIFAR-10's pickled batches (the archive or its extracted folder).

Inputs come back as floats in [0, 1] (pixel / 255) of shape ``[N, features]`` (784 for the MNISTs, 3072 for
CIFAR-10 in its channel-major order), labels as int64 class indices.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["STANDARD", "load_standard", "default_root", "read_idx", "fetch"]

_IDX_TYPES: dict[int, npt.DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
                                        0x0E: ">f8"}


@dataclass(frozen=True)
class Standard:
    """A data set's distribution: its files with their MD5 checksums, where to fetch them, how they are laid out."""

    name: str
    files: dict[str, str]  # file name -> MD5 of the published file
    mirrors: tuple[str, ...]  # base URLs, tried in order
    torchvision_folder: str
    classes: tuple[str, ...]
    kind: str  # "idx" or "cifar"


_DIGITS = tuple(str(i) for i in range(10))
STANDARD: dict[str, Standard] = {
    "mnist": Standard(
        "mnist",
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        "MNIST/raw", _DIGITS, "idx"),
    "fashion-mnist": Standard(
        "fashion-mnist",
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "FashionMNIST/raw",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "idx"),
    "cifar10": Standard(
        "cifar10",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        ("https://www.cs.toronto.edu/~kriz/",),
        "cifar-10-batches-py",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "cifar"),
}
_SPLITS = ("all", "train", "test")
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def default_root() -> Path:
    """The cache directory of data sets: ``$INFOPLANE_DATA``, else ``$XDG_CACHE_HOME/infoplane/datasets``."""
    if os.environ.get("INFOPLANE_DATA"):
        return Path(os.environ["INFOPLANE_DATA"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "infoplane" / "datasets"


def md5_of(path: Path) -> str:
    """MD5 of a file (the checksum the distributions publish; integrity, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzipped when the name ends in ``.gz``) into a numpy array.

    Raises
    ------
    ValueError
        When the header is not IDX or the size does not match it (a truncated or wrong file).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number); is it the right file, fully downloaded?")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    start = 4 + 4 * ndim
    expected = start + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} holds {len(raw)} bytes where its header announces {expected} (shape {dims}); the "
                         f"file is truncated or damaged: delete it and fetch it again")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims)


def _candidates(spec: Standard, root: Path) -> list[Path]:
    return [root / spec.name, root, root / spec.torchvision_folder]


def _find_idx(spec: Standard, root: Path, name: str) -> Path | None:
    for folder in _candidates(spec, root):
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _missing_message(spec: Standard, root: Path, names: list[str]) -> str:
    where = ", ".join(str(p) for p in _candidates(spec, root))
    return (f"{spec.name}: the distribution files are not there (looked in {where} for {', '.join(names)}). Put "
            f"the published files into {root / spec.name} (from {spec.mirrors[0]}), pass root= the directory that "
            f"holds them, or download them with download=True")


def _check(path: Path, spec: Standard) -> None:
    """A gzipped/archived file with a published checksum must match it."""
    expected = spec.files.get(path.name)
    if expected is not None and md5_of(path) != expected:
        raise ValueError(f"{path}: its MD5 {md5_of(path)} is not the published {expected}; the file is damaged or "
                         f"another version: delete it and fetch it again (download=True)")


def _load_idx(spec: Standard, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    parts = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    wanted = ["train", "test"] if split == "all" else [split]
    names = [n for s in wanted for n in parts[s]]
    paths = [_find_idx(spec, root, n) for n in names]
    if any(p is None for p in paths):
        raise FileNotFoundError(_missing_message(spec, root, [n for n, p in zip(names, paths) if p is None]))
    xs, ys = [], []
    for k in range(0, len(paths), 2):
        images, labels = paths[k], paths[k + 1]
        assert images is not None and labels is not None
        _check(images, spec)
        _check(labels, spec)
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{images} and {labels} do not form a data set: images of shape {x.shape} and labels of "
                             f"shape {y.shape} (expected [N, rows, cols] and [N])")
        xs.append(x.reshape(len(x), -1))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays) and refuses every other class,
    so that a file posing as a batch cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 spell bytes

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a CIFAR-10 batch holds no {module}.{name}")


def _cifar_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    # The distribution's batches are pickled dicts of a uint8 array and a list of ints; nothing else is accepted.
    try:
        batch = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{where} is not a CIFAR-10 batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{where} is not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{where}: data of shape {data.shape} and {len(labels)} labels; expected [N, 3072] and N")
    return data, labels


def _load_cifar(spec: Standard, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    members = (list(_CIFAR_TRAIN) if split in ("all", "train") else []) + (
        ["test_batch"] if split in ("all", "test") else [])
    for folder in (root / spec.name / "cifar-10-batches-py", root / "cifar-10-batches-py"):
        if all((folder / m).is_file() for m in members):
            parts = [_cifar_batch((folder / m).read_bytes(), str(folder / m)) for m in members]
            break
    else:
        archive = next((p for p in (root / spec.name / "cifar-10-python.tar.gz", root / "cifar-10-python.tar.gz")
                        if p.is_file()), None)
        if archive is None:
            raise FileNotFoundError(_missing_message(spec, root, ["cifar-10-python.tar.gz",
                                                                  "or its folder cifar-10-batches-py"]))
        _check(archive, spec)
        with tarfile.open(archive, "r:gz") as tar:
            blobs = {}
            for m in members:
                f = tar.extractfile(f"cifar-10-batches-py/{m}")
                if f is None:
                    raise ValueError(f"{archive} has no member cifar-10-batches-py/{m}")
                blobs[m] = f.read()
        parts = [_cifar_batch(blobs[m], f"{archive}:{m}") for m in members]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fetch(name: str, root: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Fetch a data set's distribution files into ``root / name`` (checked against the published MD5s).

    Files already there with the right checksum are kept. Returns the folder.
    """
    spec = _spec(name)
    folder = (Path(root) if root is not None else default_root()) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    for file, expected in spec.files.items():
        target = folder / file
        if target.is_file() and md5_of(target) == expected:
            continue
        errors = []
        for mirror in spec.mirrors:
            try:
                _fetch_file(mirror + file, target, expected, progress)
                break
            except (OSError, ValueError) as err:
                errors.append(f"{mirror}: {err}")
        else:
            raise OSError(f"could not download {file} for {spec.name}: " + "; ".join(errors) +
                          f". Without network access, put the file into {folder} by hand")
    return folder


def _fetch_file(url: str, target: Path, expected: str, progress: bool) -> None:
    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        got = md5_of(Path(tmp))
        if got != expected:
            raise ValueError(f"checksum {got} is not the published {expected}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _spec(name: str) -> Standard:
    key = name.lower() if isinstance(name, str) else name
    if key not in STANDARD:
        raise ValueError(f"unknown standard data set {name!r}; choose one of {sorted(STANDARD)}")
    return STANDARD[key]


def load_standard(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
                  split: str = "all", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST, Fashion-MNIST or CIFAR-10 from their distribution files.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10"}
    root : str or os.PathLike, optional
        Directory holding the files (or the data set's folder, or torchvision's layout); default
        :func:`default_root`.
    download : bool, default False
        Fetch missing files (with a progress bar, checked against the published MD5s). Nothing is fetched
        otherwise: missing files raise a ``FileNotFoundError`` that says where to put them.
    split : {"all", "train", "test"}, default "all"
        The distribution's training part, its test part, or both (training rows first).
    dtype : torch.dtype, default torch.float32
        Floating dtype of the inputs.

    Returns
    -------
    inputs : Tensor [N, features]
        Pixels / 255, in [0, 1].
    labels : Tensor [N], int64
    """
    spec = _spec(name)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; got {split!r}")
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False; got {download!r}")
    base = Path(root) if root is not None else default_root()
    if download:
        fetch(spec.name, base)
    x, y = (_load_idx if spec.kind == "idx" else _load_cifar)(spec, base, split)
    if y.size and (y.min() < 0 or y.max() >= len(spec.classes)):
        raise ValueError(f"{spec.name}: labels outside 0..{len(spec.classes) - 1}; the label file is not this data "
                         f"set's")
    inputs = torch.from_numpy(x.astype(np.float32 if dtype != torch.float64 else np.float64) / 255.0).to(dtype)
    return inputs, torch.from_numpy(y.astype(np.int64))
