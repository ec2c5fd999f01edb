"""PyTorch interop: copy trained weights between a torch model and the same funcnn model.

    params, state = fn.interop.from_torch(torch_model, model, params, state, in_shape=(28, 28, 1))
    fn.interop.to_torch(model, params, state, torch_model, in_shape=(28, 28, 1))

The layers with parameters or state are paired in order: the funcnn model's leaves (nested
`serial`s walked depth first) with the torch model's leaf modules (`named_children`, depth first;
an `nn.Sequential` or any module whose children are registered in the order they run), or with
a `state_dict`'s entries grouped by module prefix (a dict of numpy arrays works too, without
torch). Parameter-free layers (activations, pools, Dropout, Flatten) pair with nothing.

Mappings (ours ↔ torch), each documented at the layer too:
  Dense ↔ Linear: w = weight.T, b = bias.   Conv2D ↔ Conv2d: w (kh, kw, cin, cout) = weight
  (cout, cin, kh, kw) transposed to HWIO, b = bias; images are NHWC here, NCHW in torch.
  BatchNorm ↔ BatchNorm1d/2d: scale, offset = weight, bias; state mean, var = running_mean,
  running_var (eval mode matches; torch's momentum 0.1 is our 0.9).
  LayerNorm, GroupNorm, RMSNorm, PRelu ↔ weight (and bias).   Embedding ↔ weight = table.
  SimpleRNN/LSTM ↔ RNN/LSTM: wi = weight_ih_l0.T, wh = weight_hh_l0.T, b = bias_ih_l0 +
  bias_hh_l0 (to torch: bias_ih_l0 = b, bias_hh_l0 = 0).   GRU: bi, bh = bias_ih_l0, bias_hh_l0.
  MultiHeadAttention ↔ MultiheadAttention: in_proj_weight = concat(wq.T, wk.T, wv.T),
  in_proj_bias = concat(bq, bk, bv), out_proj.weight = wo.T, out_proj.bias = bo.
A missing torch bias (bias=False) reads as zeros (a missing norm weight as ones); writing into
such a module needs our value to be zero (one).

Flatten order. torch flattens a (c, h, w) feature map channel-first, we flatten (h, w, c): the
layers after a Flatten of an image see the same features in another order. Given `in_shape`
(one example's shape), the per-feature layers that follow it (BatchNorm, LayerNorm, RMSNorm,
PRelu) are permuted and the first Dense's input rows are reordered, w[i] = weight.T[π(i)] with
π(i) the channel-first index of our feature i. Without `in_shape`, a Flatten followed by such a
layer raises a ValueError asking for it.

Checks: every shape (in torch's layout), the set of entries, the module type, and where a module
is given its configuration (Conv2d stride and padding, norm eps, GroupNorm groups, attention
heads, RNN nonlinearity); errors name our layer's path ("3/Dense"), the torch module and the
expected and received values. `to_torch` checks everything before it writes anything.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["from_torch", "to_torch"]


class _Spec(NamedTuple):
    """How one kind of layer maps to torch."""

    torch_types: tuple[str, ...]
    to_torch: Callable      # (params, state, perm) -> {torch name: array}
    from_torch: Callable    # (torch arrays, perm) -> (params, state or None: keep ours)
    optional: dict          # torch entries that may be absent: the value they stand for
    order: str = "none"     # after a Flatten: "keep" (per feature), "consume" (Dense), "none"
    check: Callable | None = None   # (layer, module) -> list of configuration mismatches


def _to_ours(v, perm):
    """A per-feature vector (or row-indexed matrix) from torch's feature order to ours."""
    return v if perm is None else v[perm]


def _to_theirs(v, perm):
    return v if perm is None else v[np.argsort(perm)]


def _unrecorded(record):
    """A value as `funcnn.values` recorded it, back: ("int", 3) -> 3, ("tuple", …) -> tuple."""
    if isinstance(record, tuple) and len(record) == 2 and record[0] in ("int", "float", "bool"):
        return record[1]
    if isinstance(record, tuple) and len(record) == 2 and record[0] in ("tuple", "list"):
        return tuple(_unrecorded(r) for r in record[1])
    return record


def _arg(layer, name):
    """Argument `name` of the factory call that built `layer` (None when not recorded)."""
    config = getattr(layer, "config", None)
    return None if config is None else _unrecorded(dict(config[2]).get(name))


def _pair(value):
    return None if value is None else (value, value) if isinstance(value, int) else tuple(value)


def _check_eps(layer, module):
    eps = _arg(layer, "eps")
    return [] if eps is None or module.eps == eps else [f"eps {module.eps} (ours {eps})"]


def _check_conv(layer, module):
    strides, kernel, padding = _pair(_arg(layer, "strides")), _pair(_arg(layer, "kernel")), \
        _arg(layer, "padding")
    found = []
    if strides is not None and tuple(module.stride) != strides:
        found.append(f"stride {tuple(module.stride)} (ours {strides})")
    if tuple(module.dilation) != (1, 1) or module.groups != 1 or module.padding_mode != "zeros":
        found.append(f"dilation {tuple(module.dilation)}, groups {module.groups}, padding_mode "
                     f"{module.padding_mode!r} (ours: 1, 1, 'zeros')")
    pad = module.padding
    if padding == "VALID" and pad not in ("valid", (0, 0)):
        found.append(f"padding {pad!r} (ours 'VALID': padding=0)")
    if padding == "SAME" and pad != "same" and not (
            strides == (1, 1) and isinstance(pad, tuple) and kernel is not None
            and all(2 * p == k - 1 for p, k in zip(pad, kernel))):
        found.append(f"padding {pad!r} (ours 'SAME': padding='same', or (k−1)/2 at stride 1)")
    return found


def _check_groups(layer, module):
    groups = _arg(layer, "groups")
    found = _check_eps(layer, module)
    return found + ([] if groups is None or module.num_groups == groups
                    else [f"num_groups {module.num_groups} (ours {groups})"])


def _check_heads(layer, module):
    heads = _arg(layer, "heads")
    return [] if heads is None or module.num_heads == heads else \
        [f"num_heads {module.num_heads} (ours {heads})"]


def _check_tanh(layer, module):
    del layer
    return [] if module.nonlinearity == "tanh" else \
        [f"nonlinearity {module.nonlinearity!r} (ours 'tanh')"]


def _dense_from(t, perm):
    return {"w": _to_ours(t["weight"].T, perm), "b": t["bias"]}, None


def _norm_spec(types, check=_check_eps, order="keep", offset=True):
    def to_torch(p, s, perm):
        del s
        return {"weight": _to_theirs(p["scale"], perm)} | (
            {"bias": _to_theirs(p["offset"], perm)} if offset else {})

    def from_torch(t, perm):
        return {"scale": _to_ours(t["weight"], perm)} | (
            {"offset": _to_ours(t["bias"], perm)} if offset else {}), None

    return _Spec(types, to_torch, from_torch, {"weight": 1.0, "bias": 0.0}, order, check)


def _recurrent_spec(types, split_bias: bool, check=None):
    def to_torch(p, s, perm):
        del s, perm
        ih, hh = (p["bi"], p["bh"]) if split_bias else (p["b"], np.zeros_like(p["b"]))
        return {"weight_ih_l0": p["wi"].T, "weight_hh_l0": p["wh"].T, "bias_ih_l0": ih,
                "bias_hh_l0": hh}

    def from_torch(t, perm):
        del perm
        biases = ({"bi": t["bias_ih_l0"], "bh": t["bias_hh_l0"]} if split_bias
                  else {"b": t["bias_ih_l0"] + t["bias_hh_l0"]})
        return {"wi": t["weight_ih_l0"].T, "wh": t["weight_hh_l0"].T, **biases}, None

    return _Spec(types, to_torch, from_torch, {"bias_ih_l0": 0.0, "bias_hh_l0": 0.0},
                 check=check)


def _attention_to(p, s, perm):
    del s, perm
    return {"in_proj_weight": np.concatenate([p["wq"].T, p["wk"].T, p["wv"].T]),
            "in_proj_bias": np.concatenate([p["bq"], p["bk"], p["bv"]]),
            "out_proj.weight": p["wo"].T, "out_proj.bias": p["bo"]}


def _attention_from(t, perm):
    del perm
    wq, wk, wv = np.split(t["in_proj_weight"], 3)
    bq, bk, bv = np.split(t["in_proj_bias"], 3)
    return {"wq": wq.T, "wk": wk.T, "wv": wv.T, "wo": t["out_proj.weight"].T,
            "bq": bq, "bk": bk, "bv": bv, "bo": t["out_proj.bias"]}, None


_DENSE = _Spec(("Linear",), lambda p, s, perm: {"weight": _to_theirs(p["w"], perm).T,
                                                "bias": p["b"]},
               _dense_from, {"bias": 0.0}, "consume")
_SPECS = {
    "Dense": _DENSE,
    "DropConnect": _DENSE,   # a plain Dense at eval
    "Conv2D": _Spec(("Conv2d",), lambda p, s, perm: {"weight": p["w"].transpose(3, 2, 0, 1),
                                                     "bias": p["b"]},
                    lambda t, perm: ({"w": t["weight"].transpose(2, 3, 1, 0), "b": t["bias"]},
                                     None), {"bias": 0.0}, check=_check_conv),
    "BatchNorm": _Spec(
        ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
        lambda p, s, perm: {"weight": _to_theirs(p["scale"], perm),
                            "bias": _to_theirs(p["offset"], perm),
                            "running_mean": _to_theirs(s["mean"], perm),
                            "running_var": _to_theirs(s["var"], perm)},
        lambda t, perm: ({"scale": _to_ours(t["weight"], perm),
                          "offset": _to_ours(t["bias"], perm)},
                         {"mean": _to_ours(t["running_mean"], perm),
                          "var": _to_ours(t["running_var"], perm)}),
        {"weight": 1.0, "bias": 0.0}, "keep", _check_eps),
    "LayerNorm": _norm_spec(("LayerNorm",)),
    "RMSNorm": _norm_spec(("RMSNorm",), offset=False),
    "GroupNorm": _norm_spec(("GroupNorm",), _check_groups, order="none"),
    "PRelu": _Spec(("PReLU",), lambda p, s, perm: {"weight": _to_theirs(p["slope"], perm)},
                   lambda t, perm: ({"slope": _to_ours(t["weight"], perm)}, None), {}, "keep"),
    "Embedding": _Spec(("Embedding",), lambda p, s, perm: {"weight": p["table"]},
                       lambda t, perm: ({"table": t["weight"]}, None), {}),
    "SimpleRNN": _recurrent_spec(("RNN",), False, _check_tanh),
    "LSTM": _recurrent_spec(("LSTM",), False),
    "GRU": _recurrent_spec(("GRU",), True),
    "MultiHeadAttention": _Spec(("MultiheadAttention",), _attention_to, _attention_from,
                                {"in_proj_bias": 0.0, "out_proj.bias": 0.0}, check=_check_heads),
}
_IGNORED = {"num_batches_tracked"}


# ---------------------------------------------------------------------------------------------
# The two sides, flattened to lists.


class _Leaf(NamedTuple):
    index: tuple       # position in the nested serials
    path: str          # "3/1/Dense"
    layer: Any
    params: Any
    state: Any
    in_shape: Any      # one example's input shape, or None when unknown


class _Group(NamedTuple):
    path: str
    kind: str | None   # the torch module's class name (None for a state_dict)
    module: Any
    tensors: dict      # torch entry name -> tensor (or numpy array)

    def label(self) -> str:
        return f"torch '{self.path}'" + (f" ({self.kind})" if self.kind else "")


def _kind(layer) -> str:
    return getattr(layer, "name", type(layer).__name__).split("(")[0]


def _leaves(where, layer, params, state, in_shape, index=()):
    children = getattr(layer, "children", ())
    if not children:
        yield _Leaf(index, "/".join([*map(str, index), _kind(layer)]), layer, params, state,
                    in_shape)
        return
    owner = "/".join(map(str, index)) or "the model"
    for kind, tree in (("params", params), ("state", state)):
        if not isinstance(tree, (tuple, list)) or len(tree) != len(children):
            raise ValueError(f"{where}: expected {kind} of {owner} as a tuple of {len(children)} "
                             f"entries, one per layer, received {type(tree).__name__}")
    shape = in_shape
    for i, child in enumerate(children):
        yield from _leaves(where, child, params[i], state[i], shape, index + (i,))
        shape = None if shape is None else child.output_shape(shape)


def _has_arrays(leaf: _Leaf) -> bool:
    return bool(jax.tree.leaves((leaf.params, leaf.state)))


_TORCH_LEAVES = {t for spec in _SPECS.values() for t in spec.torch_types}


def _groups(where, source) -> list[_Group]:
    """The torch side: one group per leaf module with parameters or buffers, in order."""
    if hasattr(source, "named_children") and hasattr(source, "state_dict"):
        found = []

        def walk(module, path):
            known = [c.__name__ for c in type(module).__mro__ if c.__name__ in _TORCH_LEAVES]
            children = list(module.named_children())
            if known or not children:   # a leaf (a subclass of nn.Linear reads as a Linear)
                tensors = dict(module.state_dict())
                if tensors:
                    found.append(_Group(path or "(root)", (known or [type(module).__name__])[0],
                                        module, tensors))
                return
            if list(module.named_parameters(recurse=False)) or list(
                    module.named_buffers(recurse=False)):
                found.append(_Group(path or "(root)", type(module).__name__, None,
                                    dict(module.state_dict())))
                return
            for name, child in children:
                walk(child, f"{path}.{name}" if path else name)

        walk(source, "")
        return found
    if not hasattr(source, "items"):
        raise TypeError(f"{where}: expected a torch nn.Module or a state_dict (a mapping of "
                        f"names to tensors or arrays), received {type(source).__name__}")
    grouped: dict[str, dict] = {}
    for key, value in source.items():
        prefix, _, name = key.rpartition(".")
        owner, _, sub = prefix.rpartition(".")
        if sub == "out_proj" and "in_proj_weight" in grouped.get(owner, {}):
            prefix, name = owner, f"out_proj.{name}"   # MultiheadAttention's output projection
        grouped.setdefault(prefix, {})[name] = value
    return [_Group(p or "(root)", None, None, t) for p, t in grouped.items()]


def _numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
        return (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()
    return np.asarray(tensor)


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# ---------------------------------------------------------------------------------------------
# Pairing and checks.


def _flatten_order(leaf: _Leaf):
    """π for the features after this Flatten: None (same order), an index array, or the
    Flatten's path (a str) when its input shape is unknown."""
    shape = leaf.in_shape
    if shape is None:
        return leaf.path
    if len(shape) != 3 or shape[2] == 1 or shape[0] * shape[1] == 1:
        return None
    h, w, c = shape
    return np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).ravel()


def _plan(where, source, model, params, state, in_shape) -> list:
    """[(leaf, group, spec, perm, torch-layout arrays of ours)], every pair checked."""
    leaves = list(_leaves(where, model, params, state,
                          None if in_shape is None else tuple(in_shape)))
    ours, groups = [leaf for leaf in leaves if _has_arrays(leaf)], _groups(where, source)
    if len(ours) != len(groups):
        raise ValueError(f"{where}: expected as many torch modules with parameters as funcnn "
                         f"layers with parameters or state, {len(ours)} "
                         f"({', '.join(leaf.path for leaf in ours)}), received {len(groups)} "
                         f"({', '.join(g.label() for g in groups)})")
    plan, perm, remaining = [], None, iter(groups)
    for leaf in leaves:
        if _kind(leaf.layer) == "Flatten":
            perm = _flatten_order(leaf)
        if not _has_arrays(leaf):
            continue
        group, spec = next(remaining), _SPECS.get(_kind(leaf.layer))
        if spec is None:
            raise NotImplementedError(f"{where}: {leaf.path} has no PyTorch mapping; supported: "
                                      f"{', '.join(_SPECS)} (in nested serials)")
        if isinstance(perm, str) and spec.order != "none":
            raise ValueError(f"{where}: {leaf.path} follows {perm}, whose input shape is unknown; "
                             f"pass in_shape= (one example's shape, e.g. (28, 28, 1)) so that its "
                             f"features can be reordered from torch's (c, h, w) flatten order to "
                             f"ours (h, w, c)")
        if perm is not None and spec.order == "none":
            raise NotImplementedError(f"{where}: {leaf.path} after a Flatten of an image is not "
                                      f"supported (only Dense and per-feature norms)")
        use = perm if spec.order != "none" else None
        arrays = jax.tree.map(np.asarray, (leaf.params, leaf.state))
        try:
            expected = {k: np.asarray(v) for k, v in spec.to_torch(*arrays, use).items()}
        except (KeyError, TypeError, IndexError) as error:
            received = sorted(leaf.params) if isinstance(leaf.params, dict) else leaf.params
            raise ValueError(f"{where}: {leaf.path}: expected its params and state as the layer "
                             f"makes them, received params {received} (missing or malformed: "
                             f"{error})") from None
        _check(where, leaf, group, spec, expected)
        plan.append((leaf, group, spec, use, expected))
        perm = None if spec.order == "consume" else perm
    return plan


def _check(where, leaf: _Leaf, group: _Group, spec: _Spec, expected: dict) -> None:
    pair = f"{where}: {leaf.path} ↔ {group.label()}"
    if group.kind is not None and group.kind not in spec.torch_types:
        raise ValueError(f"{pair}: expected a torch {' or '.join(spec.torch_types)}, received "
                         f"a {group.kind}")
    received = set(group.tensors) - _IGNORED
    missing = set(expected) - received - set(spec.optional)
    unexpected = received - set(expected)
    if missing or unexpected:
        raise ValueError(f"{pair}: expected entries {sorted(expected)}, received "
                         f"{sorted(received)}"
                         + (f" (missing {sorted(missing)})" if missing else "")
                         + (f" (unexpected {sorted(unexpected)})" if unexpected else ""))
    for name, value in expected.items():
        if name in group.tensors and tuple(group.tensors[name].shape) != value.shape:
            raise ValueError(f"{pair}: expected {name!r} of shape {_shape(value.shape)} (torch "
                             f"layout), received shape {_shape(tuple(group.tensors[name].shape))}")
    if group.module is not None and spec.check is not None:
        problems = spec.check(leaf.layer, group.module)
        if problems:
            raise ValueError(f"{pair}: the configurations differ: {'; '.join(problems)}")


def _cast_like(new: dict, old: dict, leaf: _Leaf, where: str, kind: str) -> dict:
    if set(new) != set(old):
        raise ValueError(f"{where}: {leaf.path}: expected {kind} with entries {sorted(new)}, "
                         f"received {sorted(old)}")
    return {k: jnp.asarray(v, dtype=jnp.result_type(old[k])) for k, v in new.items()}


def from_torch(module_or_state_dict, model, params, state, *, in_shape=None):
    """(params, state) of `model` holding the torch model's weights (and BatchNorm statistics).

    `module_or_state_dict`: an `nn.Module` (its leaf modules in registration order) or a
    `state_dict` (a mapping of names to tensors or numpy arrays); `params`, `state`: the model's
    current trees, whose structure and dtypes the result keeps. `in_shape` (one example's shape)
    is needed when a Flatten of an image precedes a Dense (see the module docstring).
    """
    plan = _plan("from_torch", module_or_state_dict, model, params, state, in_shape)
    updates = {}
    for leaf, group, spec, perm, expected in plan:
        arrays = {name: _numpy(t) for name, t in group.tensors.items() if name not in _IGNORED}
        for name, fill in spec.optional.items():
            if name in expected and name not in arrays:
                arrays[name] = np.full(expected[name].shape, fill, expected[name].dtype)
        new_params, new_state = spec.from_torch(arrays, perm)
        updates[leaf.index] = (
            _cast_like(new_params, leaf.params, leaf, "from_torch", "params"),
            leaf.state if new_state is None else
            _cast_like(new_state, leaf.state, leaf, "from_torch", "state"))
    return _rebuild(model, params, state, updates)


def _rebuild(layer, params, state, updates, index=()):
    if index in updates:
        return updates[index]
    children = getattr(layer, "children", ())
    if not children:
        return params, state
    pairs = [_rebuild(c, p, s, updates, index + (i,))
             for i, (c, p, s) in enumerate(zip(children, params, state))]
    return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)


def to_torch(model, params, state, module, *, in_shape=None):
    """Write `model`'s params (and BatchNorm statistics) into the torch `module` (or into a
    state_dict's tensors, or numpy arrays) in place, and return it. Everything is checked
    before anything is written; `in_shape` as in `from_torch`."""
    plan = _plan("to_torch", module, model, params, state, in_shape)
    writes = []
    for leaf, group, spec, _, expected in plan:
        for name, value in expected.items():
            if name in group.tensors:
                writes.append((group.tensors[name], value))
            elif not np.all(value == spec.optional[name]):
                raise ValueError(f"to_torch: {leaf.path} ↔ {group.label()} has no {name!r}; "
                                 f"expected ours to be {spec.optional[name]} there, received "
                                 f"values up to {np.max(np.abs(value)):.3g}")
    for target, value in writes:
        if isinstance(target, np.ndarray):
            np.copyto(target, value, casting="unsafe")
            continue
        import torch   # the target holds torch tensors: torch is installed
        with torch.no_grad():
            target.copy_(torch.as_tensor(np.array(value), dtype=target.dtype))
    return module
