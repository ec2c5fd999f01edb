"""Checkpoints: exact round trips, atomic writes under failure, corrupt and malicious files."""
import hashlib
import io
import json
import os
import pickle
import zipfile
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import checkpoint


class TraceState(NamedTuple):
    count: jax.Array
    trace: dict


def _tree(scale=1.0):
    return {"params": ({"w": scale * jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}, {}),
            "opt_state": TraceState(jnp.array(7), {"w": np.full(2, 0.1, np.float64)}),
            "epoch": 3, "key": jax.random.key(42), "history": {"loss": [0.9, 0.5]}, "note": None}


def test_round_trip_with_like_rebuilds_structure_exactly(tmp_path):
    tree = _tree()
    checkpoint.save(tmp_path / "a.ckpt", tree)
    back = checkpoint.load(tmp_path / "a.ckpt", like=tree)
    assert isinstance(back["params"], tuple) and isinstance(back["opt_state"], TraceState)
    assert back["opt_state"].trace["w"].dtype == np.float64
    assert back["epoch"] == 3 and back["history"] == {"loss": [0.9, 0.5]} and back["note"] is None
    chex.assert_trees_all_equal(jax.random.key_data(back["key"]), jax.random.key_data(tree["key"]))
    chex.assert_trees_all_equal(back["params"], tree["params"])
    np.testing.assert_array_equal(jax.random.uniform(back["key"], (3,)),
                                  jax.random.uniform(tree["key"], (3,)))


def test_load_without_like_gives_dicts_and_lists(tmp_path):
    checkpoint.save(tmp_path / "a.ckpt", _tree())
    back = checkpoint.load(tmp_path / "a.ckpt")
    assert isinstance(back["params"], list) and isinstance(back["opt_state"], dict)
    assert set(back["opt_state"]) == {"count", "trace"}


@pytest.mark.parametrize("change,message", [
    (lambda t: dict(t, params=({"w": jnp.zeros((2, 4)), "b": jnp.zeros(3)}, {})),
     r"params/0/w: expected shape \(2, 4\) dtype float32, received shape \(2, 3\) dtype float32"),
    (lambda t: dict(t, params=({"w": jnp.zeros((2, 3), jnp.int32), "b": jnp.zeros(3)}, {})),
     r"params/0/w: expected shape \(2, 3\) dtype int32, received .* dtype float32"),
    (lambda t: dict(t, params=({"w": jnp.zeros((2, 3))}, {})),
     r"params/0: expected keys \['w'\], received \['b', 'w'\]"),
    (lambda t: dict(t, params=t["params"] + ({},)),
     r"params: expected a sequence of 3 entries, received 2 entries"),
])
def test_mismatch_with_like_names_the_leaf(tmp_path, change, message):
    checkpoint.save(tmp_path / "a.ckpt", _tree())
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(tmp_path / "a.ckpt", like=change(_tree()))


@pytest.mark.parametrize("failing", ["os.replace", "numpy.savez"])
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch, failing):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, _tree(1.0))

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    module, name = failing.split(".")
    monkeypatch.setattr(os if module == "os" else np, name, crash)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(path, _tree(2.0))
    monkeypatch.undo()
    chex.assert_trees_all_equal(checkpoint.load(path, like=_tree())["params"], _tree(1.0)["params"])
    assert os.listdir(tmp_path) == ["run.ckpt"], "a temporary file was left behind"


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "a.ckpt"
    checkpoint.save(path, _tree())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)


def test_bit_flip_is_caught(tmp_path):
    path = tmp_path / "a.ckpt"
    checkpoint.save(path, {"w": jnp.zeros(1000)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickle_payload_executes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload()
    with open("evil.ckpt", "wb") as out:
        np.savez(out, leaf_0=evil, __structure__=np.frombuffer(b'{"format": "x"}', np.uint8),
                 __checksum__=np.zeros(4, np.uint8))
    raw = pickle.dumps(_Payload())
    (tmp_path / "raw.ckpt").write_bytes(raw)
    for name in ("evil.ckpt", "raw.ckpt"):
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load(tmp_path / name)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_unsupported_leaves_and_missing_file(tmp_path):
    with pytest.raises(TypeError, match="cannot store a leaf of type object"):
        checkpoint.save(tmp_path / "a.ckpt", {"x": object()})
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float8_e4m3fn, jnp.int4, jnp.float16])
def test_ml_dtypes_round_trip_bit_exact(tmp_path, dtype):
    tree = {"w": jnp.array([[1.5, -2.0, 3.0], [0.25, 0.0, -1.0]], dtype), "n": jnp.ones(2)}
    checkpoint.save(tmp_path / "a.ckpt", tree)
    for back in (checkpoint.load(tmp_path / "a.ckpt"),
                 checkpoint.load(tmp_path / "a.ckpt", like=tree)):
        assert back["w"].dtype == dtype and back["w"].shape == (2, 3)
        np.testing.assert_array_equal(np.asarray(back["w"]).astype(np.float32),
                                      np.asarray(tree["w"]).astype(np.float32))


def _write_zip(path, entries):
    """A checkpoint-shaped zip built by hand: `entries` maps names to arrays (npy) or bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in entries.items():
            buffer = io.BytesIO()
            np.save(buffer, np.frombuffer(value, np.uint8) if isinstance(value, bytes) else value)
            archive.writestr(f"{name}.npy", buffer.getvalue())


def test_reads_checkpoints_written_before_dtypes_were_recorded(tmp_path):
    leaf = np.arange(3.0)
    structure = json.dumps({"format": "funcnn-checkpoint-1",
                            "tree": {"kind": "dict", "value": {"w": {"kind": "array",
                                                                     "value": 0}}}}).encode()
    digest = hashlib.sha256(structure)
    digest.update(f"{leaf.dtype.str}{leaf.shape}".encode() + leaf.tobytes())
    _write_zip(tmp_path / "old.ckpt", {"leaf_0": leaf, "__structure__": structure,
                                       "__checksum__": digest.hexdigest().encode()})
    np.testing.assert_array_equal(checkpoint.load(tmp_path / "old.ckpt")["w"], leaf)


def test_replaced_leaf_in_a_valid_zip_fails_the_checksum(tmp_path):
    """zip's CRC cannot catch a leaf rewritten inside a well-formed zip; the SHA-256 must."""
    path = tmp_path / "a.ckpt"
    checkpoint.save(path, {"w": jnp.zeros(4), "b": jnp.ones(2)})
    with np.load(path) as archive:
        entries = {name: archive[name] for name in archive.files}
    entries["leaf_0"] = entries["leaf_0"].copy()
    entries["leaf_0"][1] = 1.0
    _write_zip(path, entries)
    assert zipfile.ZipFile(path).testzip() is None, "the rebuilt zip itself must be valid"
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_file_permissions_follow_the_umask_like_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = checkpoint.save(tmp_path / "a.ckpt", {"w": jnp.zeros(2)})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask
    assert (path.stat().st_mode & 0o777) == ((tmp_path / "plain").stat().st_mode & 0o777)


def test_keys_equal_as_strings_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint.save: .*colliding keys \[1, '1'\]"):
        checkpoint.save(tmp_path / "a.ckpt", {"x": {1: jnp.zeros(2), "1": jnp.ones(2)}})
    assert not (tmp_path / "a.ckpt").exists()
