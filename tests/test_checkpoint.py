"""Checkpoints: exact round trips, atomic writes under failure, corrupt and malicious files."""
import errno
import hashlib
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import zipfile
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
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
     r"unexpected in the checkpoint: params/0/b"),
    (lambda t: dict(t, params=t["params"] + ({},)),
     r"missing from the checkpoint: params/2"),
    (lambda t: dict(t, params={"w": jnp.zeros(2)}),
     r"params: expected dict, received a list of 2 entries"),
])
def test_mismatch_with_like_names_the_leaf(tmp_path, change, message):
    checkpoint.save(tmp_path / "a.ckpt", _tree())
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(tmp_path / "a.ckpt", like=change(_tree()))


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync", "numpy.savez"])
def test_failed_write_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                       failing):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, _tree(1.0))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    module, name = failing.split(".")
    monkeypatch.setattr(os if module == "os" else np, name, disk_full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        checkpoint.save(path, _tree(2.0))
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and str(path) in str(caught.value)
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


def _write_checkpoint(path, structure: bytes, leaves=()):
    """A file in the checkpoint format with a valid checksum around any structure bytes: what
    someone who read checkpoint.py can craft (SHA-256 detects damage, not tampering)."""
    digest = hashlib.sha256(structure)
    for leaf in leaves:
        digest.update(f"{leaf.dtype.str}{leaf.shape}".encode() + leaf.tobytes())
    _write_zip(path, {**{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)},
                      "__structure__": structure, "__checksum__": digest.hexdigest().encode()})


def _structure(tree) -> bytes:
    return json.dumps({"format": "funcnn-checkpoint-1", "tree": tree}).encode()


def test_reads_checkpoints_written_before_dtypes_were_recorded(tmp_path):
    leaf = np.arange(3.0)
    _write_checkpoint(tmp_path / "old.ckpt",
                      _structure({"kind": "dict", "value": {"w": {"kind": "array", "value": 0}}}),
                      [leaf])
    np.testing.assert_array_equal(checkpoint.load(tmp_path / "old.ckpt")["w"], leaf)


def _in_dict(node):
    return _structure({"kind": "dict", "value": {"w": node}})


_NESTED = ('{"kind": "list", "value": [' * 5000) + (']}' * 5000)
CRAFTED = {
    "header_is_a_list": (b'["funcnn-checkpoint-1"]',
                         r"expected format funcnn-checkpoint-1, received 'list'"),
    "no_tree": (b'{"format": "funcnn-checkpoint-1"}', r"expected a tree in the structure"),
    "tree_is_a_list": (_structure([{"kind": "array", "value": 0}]),
                       r"at <root>: expected a node \{'kind': …, 'value': …\}, received \["),
    "list_where_an_object_belongs": (
        _structure({"kind": "dict", "value": [{"kind": "array", "value": 0}]}),
        r"at <root>: expected the value of kind 'dict' as a JSON object, received \["),
    "index_is_a_string": (_in_dict({"kind": "array", "value": "0"}),
                          r"at w: expected the value of kind 'array' as a JSON integer, "
                          r"received '0'"),
    "index_is_a_bool": (_in_dict({"kind": "array", "value": True}), r"as a JSON integer"),
    "index_out_of_range": (_in_dict({"kind": "array", "value": 1}),
                           r"at w: expected a leaf index in \[0, 1\), received 1"),
    "negative_index": (_in_dict({"kind": "array", "value": -1}),
                       r"expected a leaf index in \[0, 1\), received -1"),
    "unknown_kind": (_in_dict({"kind": "pickle", "value": 0}),
                     r"at w: expected a kind in \[.*\], received 'pickle'"),
    "scalar_holding_an_object": (_in_dict({"kind": "scalar", "value": {"a": 1}}),
                                 r"expected a number, string, bool or null"),
    "key_of_an_unknown_implementation": (_in_dict({"kind": "key", "value": 0, "impl": "nope"}),
                                         r"expected PRNG key data"),
    "dtype_object": (_in_dict({"kind": "array", "value": 0, "dtype": "object"}),
                     r"recorded as dtype 'object'"),
    "not_utf8": (b'\xff\xfe' + _structure({"kind": "scalar", "value": 1}),
                 r"unreadable structure \(UnicodeDecodeError"),
    "not_json": (b'{"format": ', r"unreadable structure \(JSONDecodeError"),
    "nested_too_deeply": (_structure(None).replace(b"null", _NESTED.encode()),
                          r"unreadable structure \(RecursionError"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_structure_is_a_checkpoint_error_naming_the_file(tmp_path, case):
    structure, message = CRAFTED[case]
    path = tmp_path / "crafted.ckpt"
    _write_checkpoint(path, structure, [np.arange(3.0)])
    with pytest.raises(checkpoint.CheckpointError, match=message) as caught:
        checkpoint.load(path)
    assert str(path) in str(caught.value)


def _patch_headers(data: bytes, signature: bytes, offset: int, change) -> bytes:
    """Apply `change` to the 2-byte little-endian field at `offset` of every zip header."""
    data, start = bytearray(data), data.find(signature)
    while start >= 0:
        field = slice(start + offset, start + offset + 2)
        data[field] = change(int.from_bytes(data[field], "little")).to_bytes(2, "little")
        start = data.find(signature, start + 1)
    return bytes(data)


CENTRAL = b"PK\x01\x02"   # the signature of a zip central-directory header
ZIP_DAMAGE = {   # (header, offset of the field, change): what a flipped bit can do to a member
    "encrypted_flag": (CENTRAL, 8, lambda flags: flags | 0x1),            # RuntimeError before
    "strong_encryption_flag": (CENTRAL, 8, lambda flags: flags | 0x40),   # NotImplementedError
    "unknown_compression": (CENTRAL, 10, lambda method: 99),              # NotImplementedError
}


@pytest.mark.parametrize("case", list(ZIP_DAMAGE))
def test_damaged_zip_member_is_a_checkpoint_error(tmp_path, case):
    path = tmp_path / "a.ckpt"
    checkpoint.save(path, {"w": jnp.arange(4.0)})
    path.write_bytes(_patch_headers(path.read_bytes(), *ZIP_DAMAGE[case]))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or not a funcnn checkpoint"):
        checkpoint.load(path)


def test_member_that_is_no_deflate_stream_is_a_checkpoint_error(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("leaf_0.npy", b"\x07" * 64)    # deflate block type 3: invalid
    path = tmp_path / "a.ckpt"
    path.write_bytes(_patch_headers(buffer.getvalue(), CENTRAL, 10, lambda method: 8))  # deflated
    with pytest.raises(checkpoint.CheckpointError, match="invalid block type"):   # zlib.error
        checkpoint.load(path)


def test_npy_file_is_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "w.npy", np.arange(3.0))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"w.npy is not a funcnn checkpoint: expected a .npz archive, "
                             r"received a single .npy array"):
        checkpoint.load(tmp_path / "w.npy")


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


# ---------------------------------------------------------------------------------------------
# Loading into `like`: jax arrays where like has them, bit-identical resume, strict=False.


def test_load_with_like_gives_arrays_of_like_kind_dtype_and_placement(tmp_path):
    device = jax.devices()[0]
    like = {"fresh": jnp.zeros(3), "placed": jax.device_put(jnp.zeros(2, jnp.bfloat16), device),
            "host": np.zeros(2, np.float64), "key": jax.random.key(1)}
    saved = {"fresh": jnp.arange(3.0), "placed": jnp.ones(2, jnp.bfloat16),
             "host": np.full(2, 0.1, np.float64), "key": jax.random.key(7)}
    back = checkpoint.load(checkpoint.save(tmp_path / "a.ckpt", saved), like=like)
    for name in ("fresh", "placed", "key"):
        assert isinstance(back[name], jax.Array), name
        assert back[name].dtype == like[name].dtype
        assert back[name].sharding == like[name].sharding
        assert back[name].committed == like[name].committed, name
    assert isinstance(back["host"], np.ndarray) and back["host"].dtype == np.float64
    chex.assert_trees_all_equal(jax.random.key_data(back["key"]), jax.random.key_data(saved["key"]))
    chex.assert_trees_all_equal({k: back[k] for k in ("fresh", "placed", "host")},
                                {k: saved[k] for k in ("fresh", "placed", "host")})


SHARDED = """
import sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from funcnn import checkpoint
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
like = {"w": jax.device_put(np.zeros((8, 3), np.float32), sharding)}
checkpoint.save(sys.argv[1], {"w": np.arange(24, dtype=np.float32).reshape(8, 3)})
back = checkpoint.load(sys.argv[1], like=like)
assert back["w"].sharding == sharding and len(back["w"].addressable_shards) == 4, back["w"].sharding
np.testing.assert_array_equal(back["w"].addressable_shards[1].data, [[6, 7, 8], [9, 10, 11]])
print("sharded as like")
"""


def test_load_keeps_the_sharding_of_like_across_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path / "a.ckpt")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "sharded as like" in run.stdout, run.stderr[-2000:]


RESUMABLE = {
    "sgd": fn.optim.sgd(0.1),
    "momentum": fn.optim.sgd(0.1, momentum=0.9),
    "nesterov": fn.optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": fn.optim.adagrad(0.1),
    "rmsprop": fn.optim.rmsprop(0.01, momentum=0.9),
    "adam": fn.optim.adam(0.1),
    "adamw": fn.optim.adamw(0.1),
    "adam_cosine_schedule": fn.optim.adam(fn.optim.schedules.cosine(0.1, 10)),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(RESUMABLE))
def test_save_load_continue_equals_continue_bit_for_bit(tmp_path, name, jit):
    optimizer = RESUMABLE[name]

    def step(params, opt_state):
        grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(3 * x) + x**4)
                                       for x in jax.tree.leaves(p)))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return fn.optim.apply_updates(params, updates), opt_state

    step = jax.jit(step) if jit else step
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.full(3, 0.1)}
    run = step(params, optimizer.init(params))
    resumed = checkpoint.load(checkpoint.save(tmp_path / "run.ckpt", run), like=run)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(resumed))
    for _ in range(3):
        run, resumed = step(*run), step(*resumed)
    chex.assert_trees_all_equal(resumed, run)   # exact: no tolerance


def _model_params(widths, extra=None):
    params = tuple({"w": jnp.full((a, b), float(i + 1)), "b": jnp.full(b, float(i + 1))}
                   for i, (a, b) in enumerate(zip(widths, widths[1:])))
    return {"params": params, "epoch": 5, **(extra or {})}


def test_non_strict_load_into_a_changed_model_loads_what_matches_and_reports_the_rest(tmp_path):
    path = checkpoint.save(tmp_path / "a.ckpt", _model_params((2, 3, 4), {"ema": jnp.zeros(2)}))
    like = jax.tree.map(jnp.zeros_like, _model_params((2, 3, 5, 1)))
    like["epoch"] = 0
    tree, report = checkpoint.load(path, like=like, strict=False)

    chex.assert_trees_all_equal(tree["params"][0], _model_params((2, 3))["params"][0])
    chex.assert_trees_all_equal(tree["params"][1:], like["params"][1:])
    assert tree["epoch"] == 5 and set(tree) == {"params", "epoch"}
    assert isinstance(tree["params"], tuple) and isinstance(tree["params"][0]["w"], jax.Array)
    assert report.missing == ("params/2",) and report.unexpected == ("ema",)
    assert report.mismatched == {
        "params/1/w": ("shape (3, 5) dtype float32", "shape (3, 4) dtype float32"),
        "params/1/b": ("shape (5,) dtype float32", "shape (4,) dtype float32")}
    assert not report.matched
    assert str(report) == (
        "missing from the checkpoint: params/2\n"
        "unexpected in the checkpoint: ema\n"
        "params/1/b: expected shape (5,) dtype float32, received shape (4,) dtype float32\n"
        "params/1/w: expected shape (3, 5) dtype float32, received shape (3, 4) dtype float32")
    with pytest.raises(checkpoint.CheckpointError, match=r"does not match like=:\n(.|\n)*ema"):
        checkpoint.load(path, like=like)


def test_non_strict_load_of_a_matching_tree_reports_nothing(tmp_path):
    tree = _tree()
    back, report = checkpoint.load(checkpoint.save(tmp_path / "a.ckpt", tree), like=tree,
                                   strict=False)
    assert report.matched and str(report) == "every entry matched"
    assert (report.missing, report.unexpected, report.mismatched) == ((), (), {})
    chex.assert_trees_all_equal(back["params"], tree["params"])
    with pytest.raises(ValueError, match="strict=False loads into like="):
        checkpoint.load(tmp_path / "a.ckpt", strict=False)


# ---------------------------------------------------------------------------------------------
# Real processes: a writer killed mid-save, writers racing on one path.


KILLED_WRITER = """
import os, sys, time
import numpy as np
from funcnn import checkpoint
def stall(fd):   # the file is written, not yet synced nor renamed: kill me now
    print("writing", flush=True)
    time.sleep(120)
os.fsync = stall
checkpoint.save(sys.argv[1], {"w": np.full(1000, 2.0)})
"""


def test_temporaries_of_a_writer_killed_mid_save_are_removed_by_the_next_save(tmp_path):
    path = checkpoint.save(tmp_path / "run.ckpt", {"w": np.full(1000, 1.0)})
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
    finally:
        writer.kill()
        writer.wait()
    (leftover,) = [p.name for p in tmp_path.iterdir() if p.name != "run.ckpt"]
    assert f".{writer.pid}." in leftover and leftover.endswith(".tmp")
    np.testing.assert_array_equal(checkpoint.load(path)["w"], np.full(1000, 1.0))

    # A writer that still runs (this process) keeps its temporary file.
    running = f".run.ckpt.{socket.gethostname()}.{os.getpid()}.{'0' * 16}.tmp"
    (tmp_path / running).write_bytes(b"half-written")
    checkpoint.save(path, {"w": np.full(1000, 3.0)})
    assert sorted(os.listdir(tmp_path)) == sorted(["run.ckpt", running])
    np.testing.assert_array_equal(checkpoint.load(path)["w"], np.full(1000, 3.0))


RACING_WRITER = """
import sys
import numpy as np
from funcnn import checkpoint
value = float(sys.argv[2])
for _ in range(20):
    checkpoint.save(sys.argv[1], {"w": np.full(20_000, value), "tag": value})
"""


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_processes_saving_to_one_path_never_leave_a_mixed_or_corrupt_file(tmp_path):
    path = tmp_path / "shared.ckpt"
    writers = [subprocess.Popen([sys.executable, "-c", RACING_WRITER, str(path), str(value)])
               for value in (1.0, 2.0)]
    seen = set()
    while any(w.poll() is None for w in writers):
        if path.exists():
            tree = checkpoint.load(path)
            np.testing.assert_array_equal(tree["w"], np.full(20_000, tree["tag"]))
            seen.add(tree["tag"])
        time.sleep(0.01)
    assert [w.returncode for w in writers] == [0, 0]
    assert seen and os.listdir(tmp_path) == ["shared.ckpt"]
    assert checkpoint.load(path)["tag"] in (1.0, 2.0)
