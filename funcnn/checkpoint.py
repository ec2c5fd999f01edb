"""Safe checkpoints of pytrees: no pickle, structure as JSON, a checksum, atomic writes.

A checkpoint is one `.npz` (zip) file holding the array leaves `leaf_0 … leaf_{n−1}`, the tree's
structure as JSON (`__structure__`), and a SHA-256 over both (`__checksum__`). It is written to a
temporary file in the same folder, flushed to disk, then renamed over the target: a crash at any
moment leaves the previous checkpoint intact, and two processes saving to one path leave one
complete file or the other, never a mix. The temporary file's name carries the writer's host
and process id (`.NAME.HOST.PID.RANDOM.tmp`); `save` deletes the temporaries of writers on the
same host that no longer run (killed mid-save), on POSIX systems.

Loading never unpickles (`allow_pickle=False`), so a crafted file cannot execute code. What
`load` raises:
- `FileNotFoundError` (or the `OSError` of reading, e.g. `PermissionError`) naming the path when
  the file cannot be read at all;
- `CheckpointError` (a `ValueError`) naming the path for every file that is not a valid
  checkpoint: truncated, damaged, tampered (checksum), crafted (a malformed structure), another
  format (a `.npy`, a pickle), or one that does not match `like=`.
`save` raises an `OSError` naming the checkpoint's path when the disk is full or writing fails.

Each array's dtype name is recorded in the structure. The dtypes numpy cannot read back from
`.npy` (the ml_dtypes extensions JAX uses: bfloat16, float8_*, int4, ...) are stored as an
unsigned-integer view of the same item size and viewed back on load, bit for bit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import secrets
import socket
import zipfile
import zlib
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
    if _is_namedtuple(node):
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


def _is_namedtuple(node) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


# The JSON type of each kind's "value": containers hold nodes, arrays and keys a leaf index.
_VALUE_TYPES = {"dict": dict, "namedtuple": dict, "tuple": list, "list": list, "array": int,
                "key": int}
_JSON_NAMES = {dict: "object", list: "array", int: "integer"}


def _decode(spec, arrays: list, where: str = ""):
    """The tree described by `spec`: numpy arrays, PRNG keys, dicts, lists and scalars.

    Raises CheckpointError, naming the node, for any structure `_encode` does not write."""
    def malformed(expected, received):
        return CheckpointError(f"at {where or '<root>'}: expected {expected}, received "
                               f"{received!r:.80}")

    if not isinstance(spec, dict) or "kind" not in spec or "value" not in spec:
        raise malformed("a node {'kind': …, 'value': …}", spec)
    kind, value = spec["kind"], spec["value"]
    if kind == "scalar":
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise malformed("a number, string, bool or null", value)
    if not isinstance(kind, str) or kind not in _VALUE_TYPES:   # a list kind is unhashable
        raise malformed(f"a kind in {sorted(_VALUE_TYPES) + ['scalar']}", kind)
    if not isinstance(value, _VALUE_TYPES[kind]) or isinstance(value, bool):
        raise malformed(f"the value of kind {kind!r} as a JSON {_JSON_NAMES[_VALUE_TYPES[kind]]}",
                        value)
    child = lambda name: f"{where}/{name}" if where else str(name)
    if kind in ("dict", "namedtuple"):
        return {k: _decode(v, arrays, child(k)) for k, v in value.items()}
    if kind in ("tuple", "list"):
        return [_decode(v, arrays, child(i)) for i, v in enumerate(value)]
    if not 0 <= value < len(arrays):
        raise malformed(f"a leaf index in [0, {len(arrays)})", value)
    if kind == "key":
        try:
            return jax.random.wrap_key_data(jnp.asarray(arrays[value]), impl=spec.get("impl"))
        except (TypeError, ValueError) as error:
            raise malformed("PRNG key data and a key implementation", spec.get("impl")) from error
    # numpy, exactly as saved (jnp would narrow float64 under x32). Files written before dtypes
    # were recorded have no "dtype" and hold no ml_dtypes arrays.
    return _restore_dtype(arrays[value], spec.get("dtype", arrays[value].dtype.name))


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
        raise CheckpointError(f"a leaf stored as {array.dtype.name} is recorded as dtype "
                              f"{name!r}; expected the same dtype, or an ml_dtypes dtype stored "
                              f"as unsigned integers of its size")
    return array.view(dtype)


def _checksum(structure: bytes, arrays: list) -> str:
    digest = hashlib.sha256(structure)
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Save.

_HOST = socket.gethostname()


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside `path` named after this host and process (an unused random name),
    opened for writing with mode 0o666 so that the umask applies as for `open(path, "w")`
    (mkstemp would make it 0o600)."""
    while True:
        name = str(path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)   # signal 0: no signal, only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of `path` left by writers on this host that no longer run (a save
    killed by SIGKILL, OOM or a power cut). POSIX only: elsewhere `os.kill(pid, 0)` is no probe."""
    if os.name != "posix":
        return
    own = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(_HOST)}\.(\d+)\.[0-9a-f]+\.tmp")
    for entry in path.parent.iterdir():
        found = own.fullmatch(entry.name)
        if found and not _is_running(int(found.group(1))):
            with contextlib.suppress(FileNotFoundError):   # another saver removed it first
                entry.unlink()


def save(path, tree) -> Path:
    """Write `tree` (nested dicts/lists/tuples/NamedTuples of arrays, numbers, strings, PRNG
    keys) to `path` atomically: the old file is replaced only once the new one is complete.

    The file gets the permissions a plain `open(path, "w")` would give (0o666 minus the umask).
    Dict keys are stored as strings (`str(key)`); keys equal as strings, like 1 and "1", are a
    ValueError. A failed write (a full disk: ENOSPC) raises an `OSError` naming `path` and
    leaves the previous checkpoint and no temporary file; temporaries of killed writers are
    removed.
    """
    path = Path(path)
    arrays: list = []
    structure = json.dumps({"format": FORMAT, "tree": _encode(tree, arrays)}).encode()
    payload = {f"leaf_{i}": a for i, a in enumerate(arrays)}
    payload["__structure__"] = np.frombuffer(structure, np.uint8)
    payload["__checksum__"] = np.frombuffer(_checksum(structure, arrays).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise OSError(error.errno, f"checkpoint.save: could not write {path}: "
                                   f"{error.strerror or error}") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


# ---------------------------------------------------------------------------------------------
# Load.

# What numpy's and zipfile's readers raise on damaged bytes (an "encrypted" or "compressed"
# flag flipped in a member's header: RuntimeError, NotImplementedError; bad deflate data: zlib).
_DAMAGED = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, RuntimeError,
            NotImplementedError)


def _read(path: Path):
    """The tree stored at `path` as `_decode` returns it, after checking the checksum."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint.load: no checkpoint at {path}") from None
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        contents = ({name: archive[name] for name in archive.files}
                    if isinstance(archive, np.lib.npyio.NpzFile) else None)
    except _DAMAGED as error:
        raise CheckpointError(f"{path} is corrupt or not a funcnn checkpoint "
                              f"(truncated or damaged file: {error})") from error
    if contents is None:
        raise CheckpointError(f"{path} is not a funcnn checkpoint: expected a .npz archive, "
                              f"received a single .npy array")
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
    try:
        header = json.loads(structure.decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else type(header).__name__
            raise CheckpointError(f"expected format {FORMAT}, received {found!r:.80}")
        if "tree" not in header:
            raise CheckpointError("expected a tree in the structure, received none")
        return _decode(header["tree"], arrays)
    except CheckpointError as error:
        raise CheckpointError(f"{path} is not a valid funcnn checkpoint: {error}") from None
    except (ValueError, RecursionError) as error:   # not UTF-8, not JSON, nested too deeply
        raise CheckpointError(f"{path} is not a valid funcnn checkpoint: unreadable structure "
                              f"({type(error).__name__}: {error})") from error


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load(path, like=…, strict=False)` could not load, by path ("params/0/w").

    `missing`: entries of `like` absent from the checkpoint (like's values kept);
    `unexpected`: entries of the checkpoint absent from `like` (not loaded);
    `mismatched`: path → (expected, received), shape and dtype (or type) of entries present in
    both that differ (like's values kept).
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: dict[str, tuple[str, str]]

    @property
    def matched(self) -> bool:
        """Whether every entry of `like` was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self):
        if self.matched:
            return "every entry matched"
        lines = []
        if self.missing:
            lines.append(f"missing from the checkpoint: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in the checkpoint: {', '.join(self.unexpected)}")
        lines += [f"{where}: expected {expected}, received {received}"
                  for where, (expected, received) in self.mismatched.items()]
        return "\n".join(lines)


def _describe(value) -> str:
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return f"shape {tuple(np.shape(value))} dtype {value.dtype}"
    if isinstance(value, list):
        return f"a list of {len(value)} entries"
    return type(value).__name__


def _as_like(array, like):
    """A loaded array as `like`'s kind: a jax array on like's sharding (uncommitted when like
    is, so that jit may place it), or numpy as stored."""
    if isinstance(like, jax.Array):
        return jax.device_put(array, like.sharding if like.committed else None)
    return array


def _load_into(like, stored) -> tuple:
    """(like with every entry that `stored` holds with the same shape and dtype replaced by it,
    LoadReport of the rest)."""
    missing, unexpected, mismatched = [], [], {}

    def differ(like, stored, where):
        mismatched[where or "<root>"] = (_describe(like), _describe(stored))
        return like

    def match(like, stored, where):
        child = lambda name: f"{where}/{name}" if where else str(name)
        if isinstance(like, dict) or _is_namedtuple(like):
            if not isinstance(stored, dict):
                return differ(like, stored, where)
            items = like._asdict().items() if _is_namedtuple(like) else like.items()
            names = {str(k) for k, _ in items}
            missing.extend(child(k) for k, _ in items if str(k) not in stored)
            unexpected.extend(child(k) for k in stored if k not in names)
            values = {k: match(v, stored[str(k)], child(k)) if str(k) in stored else v
                      for k, v in items}
            return type(like)(**values) if _is_namedtuple(like) else values
        if isinstance(like, (tuple, list)):
            if not isinstance(stored, list):
                return differ(like, stored, where)
            missing.extend(child(i) for i in range(len(stored), len(like)))
            unexpected.extend(child(i) for i in range(len(like), len(stored)))
            return type(like)(match(v, stored[i], child(i)) if i < len(stored) else v
                              for i, v in enumerate(like))
        if like is None or isinstance(like, (bool, int, float, str)):
            return stored if type(stored) is type(like) else differ(like, stored, where)
        if not isinstance(stored, (np.ndarray, jax.Array)):
            return differ(like, stored, where)
        dtype = like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype
        if (np.shape(like), dtype) != (stored.shape, stored.dtype):
            return differ(like, stored, where)
        return _as_like(stored, like)

    tree = match(like, stored, "")
    return tree, LoadReport(tuple(missing), tuple(unexpected), mismatched)


def load(path, like=None, *, strict: bool = True):
    """Read a checkpoint written by `save`.

    Without `like`: nested dicts and lists as stored (tuples come back as lists), arrays as
    numpy arrays with the saved dtype and bits, PRNG keys as JAX keys.
    With `like`: the structure of `like` (tuples stay tuples, NamedTuples are rebuilt), each
    array leaf as like's leaf is: a jax array where `like` has one (on its sharding), numpy where
    it has numpy; so a restored optimizer state continues bit for bit as the saved one would.
    `strict=True` (the default) checks that every key, length, shape and dtype matches and
    raises a `CheckpointError` naming every difference. `strict=False` returns `(tree, report)`:
    the entries that match are loaded, the others keep like's values, and the `LoadReport`
    lists what was missing, unexpected or mismatched (as torch's `load_state_dict(strict=False)`):

    >>> params, report = fn.checkpoint.load("run.ckpt", like=new_params, strict=False)
    >>> print(report)
    missing from the checkpoint: 3
    """
    path = Path(path)
    if not strict and like is None:
        raise ValueError("checkpoint.load: strict=False loads into like=; pass the tree to "
                         "load into as like=")
    stored = _read(path)
    if like is None:
        return stored
    tree, report = _load_into(like, stored)
    if not strict:
        return tree, report
    if not report.matched:
        raise CheckpointError(f"{path} does not match like=:\n{report}")
    return tree


__all__ = ["CheckpointError", "LoadReport", "load", "save"]
