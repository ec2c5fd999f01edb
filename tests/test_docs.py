"""The documentation cannot rot: every ```python block of the site's pages runs, every `>>>`
example in funcnn's docstrings runs (doctest), every public module has an API page, and the
site builds with `mkdocs build --strict` (warnings are errors).

A page's blocks run in order in one namespace, as a reader would run them, in a temporary
working directory. An HTML comment on the line just before a block (invisible on the site) marks
it:

    <!-- needs: mnist -->       skipped unless $FUNCNN_DATA_DIR holds the MNIST IDX files;
                                later blocks of the page must not depend on it
    <!-- docs-test: skip -->    not run (a signature sketch, or a block another test runs);
                                text may follow "skip", e.g. "skip (tests/test_readme.py runs it)"

Docstring examples run with the module's globals plus `fn`, `nn`, `jax`, `jnp` and `np`, under
doctest's ELLIPSIS and NORMALIZE_WHITESPACE.
"""
import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*(needs:\s*mnist|docs-test:\s*skip)\b.*?-->")

# Docstring examples that are sketches (they use names defined nowhere). Each is an expected
# failure, strictly: once its docstring runs (or is marked `# doctest: +SKIP`), the XPASS fails
# and the entry must go from this set.
SKETCHES = {
    "funcnn.backprop.value_and_grad",
    "funcnn.checkpoint.load",
    "funcnn.diagnostics.find_nonfinite",
    "funcnn.nn.stochastic.Dropout",
}


def code_blocks(path: Path):
    """[(line, marker or None, code)] for every ```python block of a Markdown file (a block
    indented inside an admonition or a list is dedented)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            previous = lines[i - 1] if i else ""
            marker = MARKER.search(previous)
            blocks.append((start + 1, marker and re.sub(r"\s+", " ", marker.group(1)),
                           textwrap.dedent("\n".join(lines[start:end]))))
            i = end
        i += 1
    return blocks


def has_mnist() -> bool:
    folder = os.environ.get("FUNCNN_DATA_DIR")
    return bool(folder) and (Path(folder) / "train-labels-idx1-ubyte.gz").exists()


def run_page(path: Path):
    """Run a page's blocks in one namespace; skip (after running the rest) if any needed MNIST."""
    namespace = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    ran, missing = 0, []
    for line, marker, code in code_blocks(path):
        if marker == "docs-test: skip":
            continue
        if marker == "needs: mnist" and not has_mnist():
            missing.append(line)
            continue
        # Pad with blank lines so that a traceback names the Markdown file's own line numbers.
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
        ran += 1
    if missing:
        pytest.skip(f"{path.name}: ran {ran} block(s); the block(s) at line(s) "
                    f"{', '.join(map(str, missing))} need real MNIST: set FUNCNN_DATA_DIR to a "
                    f"folder with the four IDX files")
    return ran


PAGES = [page for page in sorted(DOCS.rglob("*.md"))
         if any(marker != "docs-test: skip" for _, marker, _ in code_blocks(page))]


@pytest.mark.slow   # 10–25 s of compilation per page: CI runs it (`pytest -m slow`)
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # blocks may write files (run.csv, checkpoints)
    run_page(page)


def test_readme_code_runs(tmp_path, monkeypatch):
    text = README.read_text()
    if not MARKER.search(text):
        pytest.skip("README.md has no docs-test markers yet: its quick start is run by "
                    "tests/test_readme.py and its other python blocks are signature sketches; "
                    "mark them `<!-- docs-test: skip -->` (or `<!-- needs: mnist -->`)")
    monkeypatch.chdir(tmp_path)
    run_page(README)


def test_markers_bind_to_the_next_block_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- needs: mnist -->\n```python\na = 1\n```\n\n```python\nb = 2\n"
                    "c = 3\n```\n    <!-- docs-test: skip (sketch) -->\n    ```python\n"
                    "    d(*, key)\n    ```\n```bash\nmake docs\n```\n")
    assert code_blocks(page) == [(4, "needs: mnist", "a = 1"), (8, None, "b = 2\nc = 3"),
                                 (13, "docs-test: skip", "d(*, key)")]
    assert [p.name for p in PAGES] and all(p.suffix == ".md" for p in PAGES)


def funcnn_modules():
    """Every module of the funcnn package, imported (an optional dependency missing: skipped)."""
    modules = []
    for info in pkgutil.walk_packages(fn.__path__, "funcnn."):
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as error:
            if error.name is None or error.name.startswith("funcnn"):
                raise
    return [fn] + modules


def docstring_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for module in funcnn_modules():
        for test in finder.find(module):
            if test.examples:
                tests[test.name] = test
    return [tests[name] for name in sorted(tests)]


EXAMPLES = docstring_examples()


def test_docstring_examples_collected():
    """The finder sees the docstrings we know to hold examples (so new ones will run too)."""
    names = {test.name for test in EXAMPLES}
    assert {"funcnn.nn.conv.Conv2D", "funcnn.diagnostics.expected_initial_loss"} <= names
    assert SKETCHES <= names, f"sketches no longer found: {sorted(SKETCHES - names)}"


@pytest.mark.parametrize("test", [
    pytest.param(test, id=test.name,
                 marks=[pytest.mark.xfail(strict=True, reason="a sketch: uses undefined names")]
                 if test.name in SKETCHES else [])
    for test in EXAMPLES])
def test_docstring_example(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTest(test.examples, {**test.globs, "fn": fn, "nn": fn.nn, "jax": jax,
                                           "jnp": jnp, "np": np},
                           test.name, test.filename, test.lineno, test.docstring)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    runner.run(test, out=report.append, clear_globs=True)
    assert runner.failures == 0, "".join(report)


def test_every_public_module_has_an_api_page():
    """One API page per public module (`funcnn._SUBMODULES`), in the nav; a package's page
    renders each of its modules."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in fn._SUBMODULES:
        page = DOCS / "api" / f"{name}.md"
        assert page.exists(), f"funcnn.{name} has no API page: add docs/api/{name}.md"
        text = page.read_text()
        assert f"::: funcnn.{name}\n" in text, f"{page} does not render funcnn.{name}"
        assert f"api/{name}.md" in nav, f"docs/api/{name}.md is missing from mkdocs.yml's nav"
        package = ROOT / "funcnn" / name
        for module in sorted(package.glob("[!_]*.py")) if package.is_dir() else ():
            assert f"::: funcnn.{name}.{module.stem}\n" in text, \
                f"{page} does not render funcnn.{name}.{module.stem}: add `::: funcnn.{name}." \
                f"{module.stem}`"


def test_every_example_is_on_the_examples_page():
    page = (DOCS / "examples.md").read_text()
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert f'--8<-- "examples/{script.name}"' in page and f"::: {script.stem}\n" in page, \
            f"docs/examples.md does not show examples/{script.name}"
    for image in re.findall(r"\]\((figures/[^)]+)\)", page):
        assert (DOCS / image).exists(), f"{image} is missing: run docs/figures/make.py"


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    site = tmp_path / "site"
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.perf_counter() - start < 60
    assert "WARNING" not in run.stderr, run.stderr
    reference = (site / "api" / "gradcheck" / "index.html").read_text()
    assert "funcnn.gradcheck.relative_error" in reference   # the docstrings were rendered
    assert (site / "examples" / "index.html").exists()


def test_docstring_examples_render_as_code():
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("griffe_doctest", DOCS / "griffe_doctest.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    text = ("Prose, < 1e-7 is good,\n> 1e-2 is wrong.\n\n>>> x = 1\n>>> x + 1\n2\n\nAfter.\n"
            "    >>> indented()\n    out\n```text\n> kept in a fence\n```")
    assert extension.markdown_safe(text) == (
        "Prose, < 1e-7 is good,\n\\> 1e-2 is wrong.\n\n```pycon\n>>> x = 1\n>>> x + 1\n2\n```\n"
        "\nAfter.\n\n    ```pycon\n    >>> indented()\n    out\n    ```\n\n```text\n"
        "> kept in a fence\n```")
