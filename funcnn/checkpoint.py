"""Safe checkpoints of pytrees: no pickle, structure as JSON, a checksum, atomic writes.

A checkpoint is one `.npz` (zip) file holding the array leaves `leaf_0 … leaf_{n−1}`, the tree's
structure as JSON (`__structure__`), and a SHA-256 over both (`__checksum__`). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the target: a crash at any
moment leaves the previous checkpoint intact. Loading never unpickles (`allow_pickle=False`), so a
crafted file cannot execute code; it verifies the checksum and, given `like=`, the structure,
shapes and dtypes, naming the first mismatch.

Each array's dtype name is recorded in the structure. The dtypes numpy cannot read back from
`.npy` (the ml_dtypes extensions JAX uses: bfloat16, float8_*, int4, ...) are stored as an
unsigned-integer view of the same item size and viewed back on load, bit for bit.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "funcnn-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, not a checkpoint, or does not match `like=`."""


# ---------------------------------------------------------------------------------------------
# Tree <-> (JSON structure, list of numpy arrays).


def _encode(node, arrays: list) -> dict:
    """JSON description {"kind": …, "value": …} of `node`; arrays are appended to `arrays`."""
    if isinstance(node, dict):
        names = [str(k) for k in node]
        clashes = [k for k in node if names.count(str(k)) > 1]
        if clashes:
            raise ValueError(f"checkpoint.save: dict keys are stored as strings, so keys must "
                             f"differ as strings; received colliding keys {clashes!r}")
        return {"kind": "dict", "value": {str(k): _encode(v, arrays) for k, v in node.items()}}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {"kind": "namedtuple", "name": type(node).__name__,
                "value": {f: _encode(getattr(node, f), arrays) for f in node._fields}}
    if isinstance(node, (tuple, list)):
        return {"kind": type(node).__name__, "value": [_encode(v, arrays) for v in node]}
    if node is None or (isinstance(node, (bool, int, float, str)) and not isinstance(node, np.generic)):
        return {"kind": "scalar", "value": node}
    if isinstance(node, jax.Array) and jnp.issubdtype(node.dtype, jax.dtypes.prng_key):
        arrays.append(np.asarray(jax.random.key_data(node)))
        return {"kind": "key", "value": len(arrays) - 1, "impl": str(jax.random.key_impl(node))}
    array = np.asarray(node)
    if array.dtype == object:
        raise TypeError(f"checkpoint.save: cannot store a leaf of type {type(node).__name__}; "
                        f"expected arrays, numbers, strings, None, dicts, lists and tuples")
    arrays.append(array.view(f"u{array.dtype.itemsize}") if _unreadable(array.dtype) else array)
    return {"kind": "array", "value": len(arrays) - 1, "dtype": array.dtype.name}


def _decode(spec: dict, arrays: list):
    kind, value = spec["kind"], spec["value"]
    if kind in ("dict", "namedtuple"):
        return {k: _decode(v, arrays) for k, v in value.items()}
    if kind in ("tuple", "list"):
        return [_decode(v, arrays) for v in value]
    if kind == "scalar":
        return value
    if kind == "key":
        return jax.random.wrap_key_data(jnp.asarray(arrays[value]), impl=spec["impl"])
    if kind == "array":
        # numpy, exactly as saved (jnp would narrow float64 under x32). Files written before
        # dtypes were recorded have no "dtype" and hold no ml_dtypes arrays.
        return _restore_dtype(arrays[value], spec.get("dtype", arrays[value].dtype.name))
    raise CheckpointError(f"unknown node kind {kind!r} in the checkpoint structure")


def _unreadable(dtype: np.dtype) -> bool:
    """Whether `.npy` loses `dtype` (ml_dtypes such as bfloat16 are written as raw void bytes)."""
    return np.lib.format.descr_to_dtype(np.lib.format.dtype_to_descr(dtype)) != dtype


def _restore_dtype(array: np.ndarray, name: str) -> np.ndarray:
    """View a stored unsigned-integer array back as the ml_dtypes dtype `name` it was saved as."""
    if name == array.dtype.name:
        return array
    try:
        dtype = np.dtype(name) if isinstance(name, str) else None
    except TypeError:
        dtype = None
    if (dtype is None or dtype.hasobject or not _unreadable(dtype) or array.dtype.kind != "u"
            or array.dtype.itemsize != dtype.itemsize):
        raise CheckpointError(f"checkpoint.load: a leaf stored as {array.dtype.name} is recorded "
                              f"as dtype {name!r}; expected the same dtype, or an ml_dtypes dtype "
                              f"stored as unsigned integers of its size")
    return array.view(dtype)


def _checksum(structure: bytes, arrays: list) -> str:
    digest = hashlib.sha256(structure)
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Save and load.


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside `path` (an unused random name), opened for writing with mode 0o666 so
    that the umask applies as for `open(path, "w")` (mkstemp would make it 0o600)."""
    while True:
        name = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


def save(path, tree) -> Path:
    """Write `tree` (nested dicts/lists/tuples/NamedTuples of arrays, numbers, strings, PRNG
    keys) to `path` atomically: the old file is replaced only once the new one is complete.

    The file gets the permissions a plain `open(path, "w")` would give (0o666 minus the umask).
    Dict keys are stored as strings (`str(key)`); keys equal as strings, like 1 and "1", are a
    ValueError.
    """
    path = Path(path)
    arrays: list = []
    structure = json.dumps({"format": FORMAT, "tree": _encode(tree, arrays)}).encode()
    payload = {f"leaf_{i}": a for i, a in enumerate(arrays)}
    payload["__structure__"] = np.frombuffer(structure, np.uint8)
    payload["__checksum__"] = np.frombuffer(_checksum(structure, arrays).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _read(path: Path):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint.load: no checkpoint at {path}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise CheckpointError(f"{path} is corrupt or not a funcnn checkpoint "
                              f"(truncated or damaged file: {error})") from error
    if "__structure__" not in contents or "__checksum__" not in contents:
        raise CheckpointError(f"{path} is not a funcnn checkpoint: expected __structure__ and "
                              f"__checksum__ entries, received {sorted(contents)[:5]}")
    structure = contents["__structure__"].tobytes()
    arrays = [contents.get(f"leaf_{i}") for i in range(len(contents) - 2)]
    if any(a is None for a in arrays):
        raise CheckpointError(f"{path} is corrupt: leaf entries are missing")
    expected, actual = contents["__checksum__"].tobytes().decode(errors="replace"), \
        _checksum(structure, arrays)
    if expected != actual:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch (stored {expected[:16]}…, "
                              f"computed {actual[:16]}…)")
    header = json.loads(structure)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: expected format {FORMAT}, received {header.get('format')}")
    return header["tree"], arrays


def _match(like, stored, where: str, path: Path):
    """Rebuild `stored` in the structure of `like`, checking keys, lengths, shapes and dtypes."""
    def differ(expected, received):
        return CheckpointError(f"{path}: at {where or '<root>'}: expected {expected}, "
                               f"received {received}")

    def child(name):
        return f"{where}/{name}" if where else str(name)

    if isinstance(like, dict) or (isinstance(like, tuple) and hasattr(like, "_fields")):
        keys = list(like._fields) if isinstance(like, tuple) else [str(k) for k in like]
        if not isinstance(stored, dict) or sorted(stored) != sorted(keys):
            found = sorted(stored) if isinstance(stored, dict) else type(stored).__name__
            raise differ(f"keys {sorted(keys)}", found)
        if isinstance(like, tuple):
            return type(like)(*(_match(getattr(like, k), stored[k], child(k), path) for k in keys))
        return {k: _match(v, stored[str(k)], child(k), path) for k, v in like.items()}
    if isinstance(like, (tuple, list)):
        if not isinstance(stored, list) or len(stored) != len(like):
            found = f"{len(stored)} entries" if isinstance(stored, list) else type(stored).__name__
            raise differ(f"a sequence of {len(like)} entries", found)
        return type(like)(_match(a, b, child(i), path) for i, (a, b) in enumerate(zip(like, stored)))
    if like is None or isinstance(like, (bool, int, float, str)):
        if type(stored) is not type(like):
            raise differ(type(like).__name__, type(stored).__name__)
        return stored
    if not isinstance(stored, (np.ndarray, jax.Array)):
        raise differ("an array", type(stored).__name__)
    want = (tuple(np.shape(like)), getattr(like, "dtype", None) or np.asarray(like).dtype)
    got = (tuple(stored.shape), stored.dtype)
    if want != got:
        raise differ(f"shape {want[0]} dtype {want[1]}", f"shape {got[0]} dtype {got[1]}")
    return stored


def load(path, like=None):
    """Read a checkpoint written by `save`.

    Arrays come back as numpy arrays with the saved dtype and bits; PRNG keys as JAX keys.
    Without `like`: nested dicts and lists as stored (tuples come back as lists). With `like`: the
    structure of `like` (tuples stay tuples, NamedTuples are rebuilt), after checking that every
    key, length, shape and dtype matches; a `CheckpointError` names the first difference.
    """
    path = Path(path)
    spec, arrays = _read(path)
    stored = _decode(spec, arrays)
    return stored if like is None else _match(like, stored, "", path)
