"""The public surface: every public module says what it exports (`__all__`), and says it truly.

A public module is any `funcnn/**/*.py` whose dotted name has no part starting with "_".
For each: `__all__` exists, has no duplicates, names only attributes that exist, exports no
third-party module or object (jax, numpy, typing ...), lists every public function and class the
module itself defines (so new code cannot forget it), and `from module import *` binds exactly it.
"""
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import funcnn

ROOT = Path(__file__).resolve().parents[1]


def _public_modules():
    names = [info.name for info in pkgutil.walk_packages(funcnn.__path__, "funcnn.")]
    public = [name for name in names if not any(p.startswith("_") for p in name.split("."))]
    return ["funcnn"] + sorted(public)


MODULES = _public_modules()


def test_walk_finds_the_packages_and_their_modules():
    for name in ("funcnn.nn", "funcnn.nn.core", "funcnn.optim.transforms", "funcnn.train.loop",
                 "funcnn.data.idx", "funcnn.testing"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_all_is_present_unique_and_resolves(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = list(module.__all__)
    assert all(isinstance(n, str) for n in exported), f"{name}.__all__ holds a non-string"
    duplicates = sorted({n for n in exported if exported.count(n) > 1})
    assert not duplicates, f"{name}.__all__ lists {duplicates} twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists {missing}, which {name} does not have"


@pytest.mark.parametrize("name", MODULES)
def test_all_exports_only_funcnn_objects(name):
    module = importlib.import_module(name)
    foreign = []
    for n in module.__all__:
        obj = getattr(module, n)
        if isinstance(obj, types.ModuleType):
            origin = obj.__name__
        elif inspect.isfunction(obj) or inspect.isclass(obj):
            origin = obj.__module__
        else:
            continue                       # constants and values (e.g. the Loss instances)
        if origin.split(".")[0] != "funcnn":
            foreign.append(f"{n} (from {origin})")
    assert not foreign, f"{name}.__all__ re-exports third-party objects: {foreign}"


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_every_public_definition(name):
    module = importlib.import_module(name)
    defined = {n for n, obj in vars(module).items()
               if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
               and obj.__module__ == name}
    forgotten = sorted(defined - set(module.__all__))
    assert not forgotten, f"{name} defines {forgotten} but its __all__ does not list them"


@pytest.mark.parametrize("name", MODULES)
def test_star_import_binds_exactly_all(name):
    namespace = {}
    exec(f"from {name} import *", namespace)
    namespace.pop("__builtins__", None)
    module = importlib.import_module(name)
    assert set(namespace) == set(module.__all__)


def test_package_all_is_what_dir_lists_and_stays_lazy():
    public_dir = {n for n in dir(funcnn) if not n.startswith("_")} - {"importlib"}
    assert set(funcnn.__all__) - {"__version__"} >= set(funcnn._SUBMODULES) | {"summary"}
    # dir() may also show helper modules a sub-module import loaded (funcnn.values ...), never
    # less than __all__.
    assert set(funcnn.__all__) - {"__version__"} <= public_dir
    assert funcnn.summary is importlib.import_module("funcnn.summarize").summary
    # `import funcnn` itself imports no sub-module and no jax (a fresh interpreter).
    probe = ("import sys, funcnn; funcnn.__all__; "
             "print(sorted(m for m in sys.modules if m.startswith(('funcnn.', 'jax'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"


def test_version_matches_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    declared = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE).group(1)
    assert isinstance(funcnn.__version__, str)
    assert funcnn.__version__ == declared
