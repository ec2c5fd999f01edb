"""Losses `loss(outputs, targets, **kw) -> scalar`, each with its hand-written `loss.grad`.

`loss.grad(outputs, targets, **kw)` is ∂loss/∂outputs (the δᴸ that starts backprop), written
by hand from the formula in the docstring, never by autodiff. `loss.branches(...)` returns the
discrete side of every kink (hinge active or not, sign of f − y) for `fn.gradcheck`.

Reductions: element-wise losses (mean_squared_error, l1, binary_cross_entropy,
sigmoid_binary_cross_entropy, max_margin's pairs) average over all elements, as PyTorch;
per-example losses (half_squared_error, softmax_cross_entropy, log_likelihood, multiclass_hinge,
multilabel_hinge, multilabel_logistic, hierarchical_softmax) sum over an example and average
over the batch. Every loss takes `reduction="mean" | "sum" | "none"`: "none" returns one value
per element or per example (as torch), "sum" their sum, "mean" (the default) the convention
above; `.grad(..., reduction=)` is the gradient of the reduced loss — for "none" that of the
sum, each example's own gradient. `reduction` is static (a Python string) under jit.

Labels are int class ids of shape (batch,) or probability rows of shape (batch, classes) where
the docstring says so, told apart by rank (rows may be of any dtype, e.g. one-hot ints).

Dtypes: the value and the gradient are computed in the inputs' promoted floating dtype, at
least float32: float16 and bfloat16 are widened, int and bool outputs or targets are cast (int
class ids stay ints), so mixed dtypes work under `jax_numpy_dtype_promotion="strict"` too;
`.grad` returns the outputs' dtype (float32 for int or bool outputs).

Refused, for the value and the gradient alike: complex outputs or targets (`TypeError`), an
empty batch (`ValueError` naming the loss and the shape: a mean over nothing is no loss), an
unknown `reduction` (`ValueError`), and, when the values are concrete (not traced under jit),
probabilities outside [0, 1] for `binary_cross_entropy` and `log_likelihood` and labels outside
[0, classes).

Modules: `base` (the `Loss` value, reductions, shared checks), `regression`, `binary`,
`multiclass`, `hierarchical` (hierarchical softmax and its `Tree`).
"""
from funcnn.losses.base import Loss
from funcnn.losses.binary import (binary_cross_entropy, multilabel_hinge, multilabel_logistic,
                                  sigmoid_binary_cross_entropy)
from funcnn.losses.hierarchical import Tree, balanced_tree, hierarchical_softmax
from funcnn.losses.multiclass import (log_likelihood, max_margin, multiclass_hinge,
                                      softmax_cross_entropy)
from funcnn.losses.regression import half_squared_error, l1, mean_squared_error

__all__ = ["Loss", "Tree", "balanced_tree", "binary_cross_entropy", "half_squared_error",
           "hierarchical_softmax", "l1", "log_likelihood", "max_margin", "mean_squared_error",
           "multiclass_hinge", "multilabel_hinge", "multilabel_logistic",
           "sigmoid_binary_cross_entropy", "softmax_cross_entropy"]
