"""Datasets: IDX parsing and its errors, lookup order, verified atomic downloads, real MNIST."""
import gzip
import hashlib
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import funcnn as fn
from funcnn.data import idx


def _idx_bytes(array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    """A 3-image IDX dataset with its own checksums, written as .gz files into tmp_path/tiny."""
    images = np.arange(3 * 2 * 2).reshape(3, 2, 2) * 20
    labels = np.array([2, 0, 1])
    folder = tmp_path / "tiny"
    folder.mkdir()
    files = []
    for name, array, magic in [("tiny-images", images, idx.IMAGES_MAGIC),
                               ("tiny-labels", labels, idx.LABELS_MAGIC)]:
        raw = _idx_bytes(array, magic)
        packed = gzip.compress(raw)
        (folder / f"{name}.gz").write_bytes(packed)
        files.append(idx.IdxFile(name, hashlib.sha256(packed).hexdigest(),
                                 hashlib.sha256(raw).hexdigest()))
    dataset = idx.IdxDataset("tiny", (f"file://{tmp_path / 'mirror'}/",), {"train": tuple(files)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FUNCNN_DATA_DIR", raising=False)
    return dataset, folder, images, labels


def test_parse_and_normalise(tiny_dataset):
    dataset, folder, images, labels = tiny_dataset
    x, y = idx.load(dataset, "train", data_dir=folder)
    assert x.shape == (3, 2, 2, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)


def test_lookup_order_env_var_and_parent_folder(tiny_dataset, monkeypatch, tmp_path):
    dataset, folder, _, labels = tiny_dataset
    monkeypatch.setenv("FUNCNN_DATA_DIR", str(tmp_path))  # a data root holding tiny/
    np.testing.assert_array_equal(idx.load(dataset, "train")[1], labels)
    monkeypatch.setenv("FUNCNN_DATA_DIR", str(tmp_path / "other"))  # a sibling of tiny/
    np.testing.assert_array_equal(idx.load(dataset, "train")[1], labels)


def test_missing_files_name_where_it_looked(tiny_dataset, tmp_path):
    dataset, _, _, _ = tiny_dataset
    nowhere = tmp_path / "elsewhere" / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        idx.load(dataset, "train", data_dir=nowhere)
    message = str(error.value)
    assert str(nowhere) in message and str(tmp_path / "cache") in message
    assert "FUNCNN_DATA_DIR" in message


def test_download_verifies_and_lands_in_cache(tiny_dataset, tmp_path):
    dataset, folder, _, labels = tiny_dataset
    folder.rename(tmp_path / "mirror")
    _, y = idx.load(dataset, "train", data_dir=tmp_path / "nowhere")
    np.testing.assert_array_equal(y, labels)
    assert (tmp_path / "cache" / "funcnn" / "tiny" / "tiny-labels.gz").is_file()


def test_corrupt_download_leaves_nothing_behind(tmp_path):
    source = tmp_path / "payload"
    source.write_bytes(b"not what was promised")
    target = tmp_path / "cache" / "file.gz"
    with pytest.raises(ValueError, match="corrupt: expected SHA-256"):
        idx.download(f"file://{source}", target, "0" * 64)
    assert not target.exists() and os.listdir(target.parent) == []


def test_bit_flipped_file_is_reported_with_its_path(tiny_dataset):
    dataset, folder, _, _ = tiny_dataset
    path = folder / "tiny-images.gz"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}: expected SHA-256"):
        idx.load(dataset, "train", data_dir=folder)


@pytest.mark.parametrize("data,match", [
    (b"\x00\x00\x08\x03\x00", "expected a header of 16 bytes"),
    (_idx_bytes(np.zeros((2, 2, 2)), 2049 + 0x100), "expected magic number 2051, received 2305"),
    (_idx_bytes(np.zeros((2, 2, 2)), 2051)[:-1], r"dims \(2, 2, 2\) need 24 bytes, received 23"),
])
def test_corrupt_idx_content(data, match):
    with pytest.raises(ValueError, match=match):
        idx.parse_idx(data, idx.IMAGES_MAGIC, "bad.idx")


def test_unknown_split():
    with pytest.raises(ValueError, match="expected split 'train' or 'test', received 'val'"):
        fn.data.mnist("val")


def test_real_mnist(mnist_dir):
    x, y = fn.data.mnist("train", data_dir=mnist_dir)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 == x.min() and x.max() == 1.0
    np.testing.assert_array_equal(y[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(np.bincount(y), [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                   6265, 5851, 5949])
    x, y = fn.data.mnist("test", data_dir=mnist_dir)
    assert x.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])


def test_real_fashion_mnist_beside_mnist(mnist_dir):
    fashion = os.path.join(os.path.dirname(os.path.abspath(mnist_dir)), "fashion-mnist")
    if not os.path.isdir(fashion):
        pytest.skip(f"no Fashion-MNIST folder beside {mnist_dir}")
    x, y = fn.data.fashion_mnist("test", data_dir=mnist_dir)  # found as the sibling folder
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    np.testing.assert_array_equal(y[:5], [9, 2, 1, 1, 6])


def test_digits():
    pytest.importorskip("sklearn", reason="digits() reads the copy bundled with scikit-learn")
    x, y = fn.data.digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    (a, ya), (b, yb) = fn.data.digits("train"), fn.data.digits("test")
    assert len(a) == 1437 and len(b) == 360
    np.testing.assert_array_equal(b, x[::5])                  # every fifth image, from the first
    np.testing.assert_array_equal(np.sort(np.concatenate([ya, yb])), np.sort(y))
    assert np.bincount(yb, minlength=10).min() >= 25           # every class in the test split


def test_spiral_is_deterministic_in_its_key():
    x, y = fn.data.spiral(jax.random.key(0), points_per_class=50, classes=4)
    assert x.shape == (200, 2) and y.shape == (200,) and np.bincount(y).tolist() == [50] * 4
    np.testing.assert_array_equal(x, fn.data.spiral(jax.random.key(0), 50, 4)[0])
    assert np.abs(x).max() <= 1.0


def test_another_datasets_file_counts_as_absent_not_corrupt(tiny_dataset, monkeypatch, tmp_path):
    """MNIST's files in a folder searched for Fashion-MNIST (same names): fall through to the
    download, and to the not-found message when it fails, never "corrupt, delete them"."""
    dataset, folder, _, _ = tiny_dataset
    other_folder = tmp_path / "elsewhere" / "other"   # no tiny/ beside it
    other_folder.mkdir(parents=True)
    other_files = []
    for file, magic in zip(dataset.files["train"], (idx.IMAGES_MAGIC, idx.LABELS_MAGIC)):
        raw = _idx_bytes(np.ones((2, 2, 2) if magic == idx.IMAGES_MAGIC else (2,)), magic)
        packed = gzip.compress(raw)
        (other_folder / f"{file.name}.gz").write_bytes(packed)   # same name, other dataset
        other_files.append(idx.IdxFile(file.name, hashlib.sha256(packed).hexdigest(),
                                       hashlib.sha256(raw).hexdigest()))
    other = idx.IdxDataset("other", (), {"train": tuple(other_files)})
    monkeypatch.setattr(idx, "DATASETS", (dataset, other))
    fetched = []

    def offline(url, destination, sha256):
        fetched.append(url)
        raise OSError("offline")

    monkeypatch.setattr(idx, "download", offline)
    with pytest.raises(FileNotFoundError, match="tiny-images\\(.gz\\) not found"):
        idx.load(dataset, "train", data_dir=other_folder)
    assert fetched == [dataset.mirrors[0] + "tiny-images.gz"]
    np.testing.assert_array_equal(idx.load(other, "train", data_dir=other_folder)[1], [1, 1])


def test_real_mnist_files_are_not_called_corrupt_fashion_mnist(mnist_dir, tmp_path, monkeypatch):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((Path(mnist_dir) / name).read_bytes())
    monkeypatch.delenv("FUNCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, destination, sha256):
        raise OSError("offline")

    monkeypatch.setattr(idx, "download", offline)
    with pytest.raises(FileNotFoundError, match="fashion-mnist: t10k-images-idx3-ubyte"):
        fn.data.fashion_mnist("test", data_dir=tmp_path)


def test_parse_idx_with_huge_dims_reports_the_bytes_needed():
    header = idx.IMAGES_MAGIC.to_bytes(4, "big") + (2 ** 31).to_bytes(4, "big") * 3
    with pytest.raises(ValueError, match=f"need {16 + 2 ** 93} bytes, received 16"):
        idx.parse_idx(header, idx.IMAGES_MAGIC, "huge.idx")


def test_batches_needs_a_tuple_of_arrays():
    with pytest.raises(ValueError, match=r"batches: expected a non-empty tuple .* received a "
                                         r"single array of shape \(10, 3\)"):
        list(fn.data.batches(jax.random.key(0), np.zeros((10, 3)), 2))
    (x,), = list(fn.data.batches(jax.random.key(0), (np.arange(4.0),), 4))
    np.testing.assert_array_equal(np.sort(x), np.arange(4.0))


def test_batches_refuses_a_batch_larger_than_the_data_when_dropping_the_last():
    with pytest.raises(ValueError, match=r"batches: expected batch_size <= the 10 rows .* "
                                         r"received batch_size 16"):
        list(fn.data.batches(jax.random.key(0), (np.zeros((10, 3)),), 16))
    (x,), = list(fn.data.batches(jax.random.key(0), (np.zeros((10, 3)),), 16, drop_last=False))
    assert x.shape == (10, 3)
