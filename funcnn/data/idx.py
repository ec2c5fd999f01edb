"""MNIST and Fashion-MNIST from the standard IDX files, located, verified and parsed.

Where the files are looked for, in order: `data_dir`, `$FUNCNN_DATA_DIR`, the user cache
(`$XDG_CACHE_HOME/funcnn/<dataset>`, default `~/.cache/funcnn/<dataset>`); in each folder the
files themselves, a `<dataset>/` sub-folder, or a `<dataset>/` sibling (so one data root with
`mnist/` and `fashion-mnist/` inside works). Each file may be gzipped (`*.gz`, as distributed)
or not. Every file is checked against the canonical SHA-256 before it is parsed. When nothing is
found, the files are downloaded into the user cache (checksum verified, written atomically).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "FASHION_MNIST", "IdxDataset", "IdxFile", "MNIST", "cache_dir", "download",
           "fashion_mnist", "load", "mnist", "parse_idx"]

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


@dataclasses.dataclass(frozen=True)
class IdxFile:
    name: str          # canonical name without .gz, e.g. "train-images-idx3-ubyte"
    gz_sha256: str     # digest of the distributed .gz
    raw_sha256: str    # digest of the decompressed file


@dataclasses.dataclass(frozen=True)
class IdxDataset:
    name: str
    mirrors: tuple[str, ...]
    files: dict[str, tuple[IdxFile, IdxFile]]   # split -> (images, labels)


MNIST = IdxDataset("mnist", (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
), {
    "train": (IdxFile("train-images-idx3-ubyte",
                      "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                      "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
              IdxFile("train-labels-idx1-ubyte",
                      "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                      "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5")),
    "test": (IdxFile("t10k-images-idx3-ubyte",
                     "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                     "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
             IdxFile("t10k-labels-idx1-ubyte",
                     "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                     "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")),
})

FASHION_MNIST = IdxDataset("fashion-mnist", (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
), {
    "train": (IdxFile("train-images-idx3-ubyte",
                      "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                      "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
              IdxFile("train-labels-idx1-ubyte",
                      "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                      "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9")),
    "test": (IdxFile("t10k-images-idx3-ubyte",
                     "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                     "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
             IdxFile("t10k-labels-idx1-ubyte",
                     "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                     "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")),
})


DATASETS = (MNIST, FASHION_MNIST)


def _elsewhere(file: IdxFile) -> set[str]:
    """The digests of the known datasets' files other than `file` (e.g. MNIST's for Fashion's)."""
    return {digest for dataset in DATASETS for pair in dataset.files.values() for f in pair
            for digest in (f.gz_sha256, f.raw_sha256)} - {file.gz_sha256, file.raw_sha256}


def cache_dir(dataset: IdxDataset) -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "funcnn" / dataset.name


def _search_folders(dataset: IdxDataset, data_dir) -> list[Path]:
    roots = [Path(d) for d in (data_dir, os.environ.get("FUNCNN_DATA_DIR")) if d]
    folders = []
    for root in roots:
        folders += [root, root / dataset.name, root.parent / dataset.name]
    return folders + [cache_dir(dataset)]


def _find(file: IdxFile, folders: list[Path]) -> Path | None:
    """The first candidate whose checksum matches; None if there is none. Another known
    dataset's file of the same name (MNIST's in a folder searched for Fashion-MNIST) counts
    as absent; any other mismatch is an error if no candidate matches."""
    mismatches, elsewhere = [], _elsewhere(file)
    for folder in folders:
        for candidate in (folder / f"{file.name}.gz", folder / file.name):
            if candidate.is_file():
                expected = file.gz_sha256 if candidate.suffix == ".gz" else file.raw_sha256
                actual = _sha256(candidate)
                if actual == expected:
                    return candidate
                if actual not in elsewhere:
                    mismatches.append(f"{candidate}: expected SHA-256 {expected}, "
                                      f"received {actual}")
    if mismatches:
        raise ValueError(f"{file.name}: found only corrupt or unexpected files:\n  "
                         + "\n  ".join(mismatches)
                         + "\nDelete or replace them with the canonical files.")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, destination: Path, sha256: str) -> Path:
    """Fetch `url` to `destination`, verify its SHA-256, then rename into place (atomic).

    A failed or interrupted download never leaves a partial file at `destination`.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        actual = _sha256(Path(temporary))
        if actual != sha256:
            raise ValueError(f"download of {url} is corrupt: expected SHA-256 {sha256}, "
                             f"received {actual}")
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return destination


def _fetch(dataset: IdxDataset, file: IdxFile, folders: list[Path]) -> Path:
    destination = cache_dir(dataset) / f"{file.name}.gz"
    failures = []
    for mirror in dataset.mirrors:
        try:
            return download(mirror + destination.name, destination, file.gz_sha256)
        except (OSError, ValueError) as error:
            failures.append(f"{mirror}: {error}")
    looked = "\n  ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"{dataset.name}: {file.name}(.gz) not found. Looked in:\n  {looked}\n"
        f"and the download failed:\n  " + "\n  ".join(failures) + "\n"
        f"Provide the four IDX files: pass data_dir=..., or set FUNCNN_DATA_DIR to the folder "
        f"holding them (e.g. FUNCNN_DATA_DIR=../shared/data/{dataset.name}), or copy them to "
        f"{cache_dir(dataset)}.")


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read()
        except (OSError, EOFError) as error:
            raise ValueError(f"corrupt gzip file {path}: {error}") from error
    return path.read_bytes()


def parse_idx(data: bytes, magic: int, source: str = "IDX data") -> np.ndarray:
    """Parse an IDX (LeCun) file of unsigned bytes: big-endian magic, dims, then the data."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"corrupt IDX file {source}: expected a header of {header} bytes, "
                         f"received {len(data)} bytes in all")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"corrupt IDX file {source}: expected magic number {magic}, "
                         f"received {found}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: huge dims must not overflow
    if len(data) != expected:
        raise ValueError(f"corrupt IDX file {source}: dims {dims} need {expected} bytes, "
                         f"received {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load(dataset: IdxDataset, split: str, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    if split not in dataset.files:
        raise ValueError(f"{dataset.name}: expected split 'train' or 'test', received {split!r}")
    folders = _search_folders(dataset, data_dir)
    arrays = []
    for file, magic in zip(dataset.files[split], (IMAGES_MAGIC, LABELS_MAGIC)):
        path = _find(file, folders) or _fetch(dataset, file, folders)
        arrays.append(parse_idx(_read_bytes(path), magic, str(path)))
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"{dataset.name} {split}: {len(images)} images but {len(labels)} labels")
    return (images[..., None].astype(np.float32) / 255.0), labels.astype(np.int32)


def mnist(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits: images float32 (n, 28, 28, 1) in [0, 1], labels int32 (n,) in [0, 10).

    split "train" (60 000) or "test" (10 000). See the module docstring for where files are found.
    """
    return load(MNIST, split, data_dir)


def fashion_mnist(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Zalando): images float32 (n, 28, 28, 1) in [0, 1], labels int32 (n,)."""
    return load(FASHION_MNIST, split, data_dir)
