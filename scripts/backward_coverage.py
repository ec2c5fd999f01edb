"""Line coverage of every hand-written backward rule, measured by running tests under `coverage`.

    .venv/bin/python scripts/backward_coverage.py [pytest arguments]

A backward rule is any function (nested ones included) of funcnn/nn/ and funcnn/losses whose
name says so: `backward`, `*_grad*`, `*_prime`, `*_vjp`. The tests run in this process (no
xdist workers); by default they are the layer, loss and gradient-check files below, which must
reach every line of every rule (tracing under `jit` executes the Python, so a traced line
counts). Prints each rule's executed/total statements and the lines never run, and exits 1 when
any line of a rule is missed.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parents[1]
RULE = re.compile(r"backward|_grad|_prime$|_vjp$")
DEFAULT_TESTS = ["tests/test_nn.py", "tests/test_nn_values.py", "tests/test_nn_dtypes.py",
                 "tests/test_nn_modern.py", "tests/test_conv.py", "tests/test_norm.py",
                 "tests/test_maxout.py", "tests/test_stochastic.py", "tests/test_recurrent.py",
                 "tests/test_attention.py", "tests/test_losses.py", "tests/test_backprop.py",
                 "tests/test_gradcheck.py", "tests/test_gradcheck_mutation.py",
                 "tests/test_losses_reduction.py", "tests/test_hierarchical_softmax.py",
                 "tests/test_dropout_variants.py"]


def rule_sources() -> list[Path]:
    return sorted((ROOT / "funcnn" / "nn").glob("*.py")) + sorted(ROOT.glob("funcnn/losses*.py")) \
        + sorted((ROOT / "funcnn").glob("losses/*.py"))


def rules(path: Path):
    """(qualified name, first line, last line) of every backward rule in `path`."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                if RULE.search(child.name):
                    found.append((name, child.lineno, child.end_lineno))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return found


def main(argv):
    import pytest

    cov = coverage.Coverage(source=[str(ROOT / "funcnn")], data_file=None)
    cov.start()
    code = pytest.main((argv or DEFAULT_TESTS) + ["-q", "-n", "0", "-m", "not slow",
                                                  "-p", "no:cacheprovider"])
    cov.stop()
    if code not in (0, 5):
        print(f"the tests failed (pytest exit {code}); coverage below is of a failing run")
    total = executed = 0
    missed_rules = []
    for path in rule_sources():
        _, statements, _, missing, _ = cov.analysis2(str(path))
        statements, missing = set(statements), set(missing)
        for name, first, last in rules(path):
            body = {line for line in statements if first <= line <= last}
            lost = sorted(body & missing)
            total, executed = total + len(body), executed + len(body) - len(lost)
            where = f"{path.relative_to(ROOT)}:{name}"
            print(f"{where:<70} {len(body) - len(lost):>4}/{len(body):<4}"
                  + (f" missed lines {lost}" if lost else ""))
            if lost:
                missed_rules.append(where)
    print(f"\nbackward rules: {executed}/{total} statements run "
          f"({100 * executed / max(total, 1):.1f} %); rules with missed lines: "
          f"{len(missed_rules)}")
    return 1 if missed_rules or code not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
