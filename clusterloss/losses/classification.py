"""Classification losses for integer labels that Keras has only in one-hot form.

Keras already has `CategoricalFocalCrossentropy` and `CategoricalCrossentropy(label_smoothing=)`
for one-hot labels; these are their sparse twins (integer class ids, no one-hot tensor is
built), computed from `log_softmax` so that logits of +-1e4 and float16/bfloat16 inputs stay
finite. Accuracy needs nothing new: argmax of logits is argmax of softmax, so Keras's
`metrics=["accuracy"]` is already right for a model that outputs logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_labels, check_range, upcast
from clusterloss.losses.base import LossFunctionWrapper, validated


def _log_probs(y_pred, from_logits: bool):
    y_pred = upcast(y_pred)
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    # Probabilities, as Keras treats them: renormalise, clip, log.
    eps = keras.backend.epsilon()
    y_pred = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    return ops.log(ops.clip(y_pred, eps, 1.0 - eps))


def _target_log_prob(y_true, y_pred, from_logits: bool):
    """(labels, log p) with log p of shape (batch, classes); checks shapes and labels."""
    if len(y_pred.shape) != 2:
        raise ValueError(f"`y_pred` must have shape (batch, num_classes); got shape {tuple(y_pred.shape)}.")
    labels = check_labels(y_true, num_classes=y_pred.shape[-1], name="y_true")
    log_p = _log_probs(y_pred, from_logits)
    log_p_y = ops.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return labels, log_p, log_p_y


def _check_alpha(alpha):
    check_range(alpha, "alpha", 0.0, 1.0)
    return [float(a) for a in alpha] if isinstance(alpha, (list, tuple)) else float(alpha)


def _check_focal(gamma, alpha):
    check_range(gamma, "gamma", 0.0)
    return {"alpha": _check_alpha(alpha)}


def _check_smoothing(label_smoothing):
    check_range(label_smoothing, "label_smoothing", 0.0, 1.0)


@validated(_check_focal)
def sparse_categorical_focal_crossentropy(
    y_true,
    y_pred,
    gamma: float = 2.0,
    alpha: float | Sequence[float] = 0.25,
    from_logits: bool = False,
):
    """Focal loss (Lin et al., ICCV 2017) for integer labels, one value per sample.

    `FL_i = -alpha_{y_i} * (1 - p_{i,y_i})^gamma * log p_{i,y_i}`

    Conventions: `alpha` is a scalar (the same weight for every class, as in Keras's
    `CategoricalFocalCrossentropy`, default 0.25) or a vector with one weight per class
    (`alpha[y_i]`; the paper's alpha_t). The value equals
    `keras.losses.categorical_focal_crossentropy(one_hot(y), y_pred, ...)`; `log p` comes from
    `log_softmax` and `1 - p` from `-expm1(log p)`, so it stays finite for extreme logits.
    `gamma = 0` and `alpha = 1` give plain crossentropy.
    """
    y_pred = upcast(y_pred)
    labels, _, log_p_y = _target_log_prob(y_true, y_pred, from_logits)
    if isinstance(alpha, list):
        if len(alpha) != y_pred.shape[-1]:
            raise ValueError(f"`alpha` must have one weight per class ({y_pred.shape[-1]}); got {len(alpha)}.")
        alpha_y = ops.take(ops.convert_to_tensor(alpha, dtype=y_pred.dtype), labels)
    else:
        alpha_y = alpha
    if gamma == 0:
        return -alpha_y * log_p_y
    one_minus_p = -ops.expm1(log_p_y)
    positive = one_minus_p > 0
    # where(...) keeps the gradient of x**gamma finite at x = 0 for gamma < 1.
    modulating = ops.where(positive, ops.power(ops.where(positive, one_minus_p, 1.0), gamma), 0.0)
    return -alpha_y * modulating * log_p_y


@validated(_check_smoothing)
def sparse_label_smoothing_crossentropy(
    y_true,
    y_pred,
    label_smoothing: float = 0.1,
    from_logits: bool = False,
):
    """Crossentropy against labels smoothed toward the uniform distribution, one value per sample.

    `L_i = (1 - eps) * CE(y_i, p_i) + eps * CE(uniform, p_i)
         = -(1 - eps) * log p_{i,y_i} - eps / C * sum_k log p_{i,k}`

    This is the form of seed 004 and of Szegedy et al. (CVPR 2016); it equals
    `keras.losses.CategoricalCrossentropy(label_smoothing=eps)` on one-hot labels (whose
    smoothed target is `(1 - eps) * one_hot + eps / C`), without building a one-hot tensor.
    """
    _, log_p, log_p_y = _target_log_prob(y_true, y_pred, from_logits)
    return -(1.0 - label_smoothing) * log_p_y - label_smoothing * ops.mean(log_p, axis=-1)


@register
class SparseCategoricalFocalCrossentropy(LossFunctionWrapper, fn=sparse_categorical_focal_crossentropy):
    """Focal loss for integer labels; see `sparse_categorical_focal_crossentropy`.

    Example:
        model.compile(loss=SparseCategoricalFocalCrossentropy(gamma=2.0, from_logits=True))
    """


@register
class SparseLabelSmoothingCrossentropy(LossFunctionWrapper, fn=sparse_label_smoothing_crossentropy):
    """Label-smoothed crossentropy for integer labels; see `sparse_label_smoothing_crossentropy`.

    Example:
        model.compile(loss=SparseLabelSmoothingCrossentropy(0.1, from_logits=True))
    """
