"""A sample of the mutation table (scripts/mutation_table.py runs it all): `fn.gradcheck.check`
at its defaults catches every planted backward bug that changes the gradient, and passes the
unmutated models at several seeds. The sample: Conv2D on the path not taken on CPU (XLA's
convolutions), SAME padding on every side, non-square image and kernel, batch ≠ either side; a
4-D BatchNorm, whose `dy / scale` bug is invisible at initialisation; the multiclass hinge,
whose threshold bug is invisible on the initial batch. The unmutated layer runs as mutant 0 of
the same compiled model (its backward is then the layer's own).
"""
from collections import Counter

import pytest

import gradcheck_mutants as M

SAMPLE_LAYERS = ["Conv2D xla SAME 3x4", "BatchNorm rank 4"]
SAMPLE_LOSSES = ["multiclass_hinge"]


def _case(cases, name):
    return next(case for case in cases if case.name == name)


def _assert_all_caught(outcomes, least):
    bad = [f"{o.mutant}: {o.verdict}" for o in outcomes if o.verdict not in ("caught",
                                                                             "equivalent")]
    assert not bad, bad
    counts = Counter(o.verdict for o in outcomes)
    assert counts["caught"] >= least, counts   # the sample plants real bugs, not only no-ops


@pytest.mark.parametrize("name", SAMPLE_LAYERS)
def test_every_layer_mutant_that_changes_the_gradient_is_caught(name):
    case = _case(M.LAYERS, name)
    outcomes = M.layer_outcomes(case)
    _assert_all_caught(outcomes, least=15)
    names = {o.mutant for o in outcomes if o.verdict == "caught"}
    assert {"input gradient zeroed", "dx ×1.1 at last index", "all ×1.01"} <= names
    model, _ = M.switched_model(case)
    assert M.unmutated_failures(lambda seed: M.layer_problem(case, seed, model), range(4)) == []


@pytest.mark.parametrize("name", SAMPLE_LOSSES)
def test_every_loss_mutant_that_changes_the_gradient_is_caught(name):
    case = _case(M.LOSSES, name)
    outcomes = M.loss_outcomes(case)
    _assert_all_caught(outcomes, least=8)
    assert "δ with margin + 1" in {o.mutant for o in outcomes if o.verdict == "caught"}
    assert M.unmutated_failures(lambda seed: M.loss_problem(case, seed), range(4)) == []


def test_equivalence_is_computed_not_assumed():
    # Dense's backward never reads its bias: "backward with 1/b" is a no-op, and must be judged
    # equivalent (not caught, not missed); "b zeroed" changes the gradient and is caught.
    case = _case(M.LAYERS, "Dense rank 2")
    outcomes = {o.mutant: o.verdict for o in M.layer_outcomes(
        case, only=lambda name: name in ("backward with 1/b", "b zeroed"))}
    assert outcomes == {"backward with 1/b": "equivalent", "b zeroed": "caught"}
