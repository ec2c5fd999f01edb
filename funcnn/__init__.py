"""funcnn: a functional neural-network library on JAX with hand-written, cross-checked gradients.

    import funcnn as fn
    model = fn.nn.serial(fn.nn.Flatten(), fn.nn.Dense(64), fn.nn.Sigmoid(), fn.nn.Dense(10))

Sub-modules are imported on first use, so `import funcnn` stays fast.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("nn", "losses", "init", "regularizers", "optim", "backprop", "gradcheck", "train",
               "data", "diagnostics", "tune", "ensemble", "checkpoint", "plot", "parallel",
               "summarize", "generate", "testing", "interop")
_FUNCTIONS = {"summary": "summarize"}   # fn.summary(model, in_shape), from funcnn.summarize
__all__ = ["__version__", *_SUBMODULES, *_FUNCTIONS]   # the public names __dir__ lists


def __getattr__(name):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"funcnn.{_FUNCTIONS[name]}"), name)
    if name in _SUBMODULES:
        try:
            return importlib.import_module(f"funcnn.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"funcnn.{name}":
                raise
    raise AttributeError(f"module 'funcnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_FUNCTIONS))
