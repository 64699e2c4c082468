"""Every loss class is derived from its function (`LossFunctionWrapper`/`MetricLoss` with
`fn=`): the same options, names, defaults and order, one validation for both, and a config that
rebuilds the class."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
from helpers import to_np

import clusterloss as cl
from clusterloss.losses.base import CALL_INPUTS, reduce_per_sample

LOSSES = sorted(
    (
        obj
        for obj in vars(cl).values()
        if isinstance(obj, type)
        and issubclass(obj, cl.LossFunctionWrapper)
        and obj not in (cl.LossFunctionWrapper, cl.MetricLoss)
    ),
    key=lambda c: c.__name__,
)


def _params(fn_or_cls):
    return [(p.name, p.default) for p in inspect.signature(fn_or_cls).parameters.values()]


@pytest.mark.parametrize("cls", LOSSES, ids=lambda c: c.__name__)
def test_class_takes_its_functions_options_then_its_own(cls):
    loss = cls()
    options = [(n, d) for n, d in _params(loss.fn) if n not in CALL_INPUTS]
    params = _params(cls)
    if cls is cl.MarginLoss:  # PML's extra arguments (refused or ignored), by hand
        options = [o for o in options if o[0] != "learn_beta"]
        params = [p for p in params if p[0] not in ("triplets_per_anchor", "learn_beta", "num_classes")]
    assert params[: len(options)] == options
    assert params[-3:] == [("reduction", "sum_over_batch_size"), ("name", loss.fn.__name__), ("dtype", None)]
    config = loss.get_config()
    assert cls.from_config(config).get_config() == config
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss)).get_config() == config


# (class, bad option): the function and the class refuse it with the same message.
BAD = [
    (cl.MultiSimilarityLoss, {"base": float("inf")}),  # was checked by the class only
    (cl.MultiSimilarityLoss, {"beta": 0.0}),
    (cl.TripletMarginLoss, {"average": "mean"}),
    (cl.TripletMarginLoss, {"margin": -0.1}),
    (cl.NTXentLoss, {"temperature": 0.0}),
    (cl.SupConLoss, {"temperature": -1.0}),
    (cl.CircleLoss, {"gamma": 0.0}),
    (cl.ContrastiveLoss, {"neg_margin": -1.0}),
    (cl.FastAPLoss, {"num_bins": 0}),
    (cl.NCALoss, {"softmax_scale": 0.0}),
    (cl.ProxyNCALoss, {"softmax_scale": float("nan")}),
    (cl.InstanceLoss, {"gamma": 0.0}),
    (cl.AngularLoss, {"alpha": 95.0}),
    (cl.TupletMarginLoss, {"scale": 0.0}),
    (cl.LiftedStructureLoss, {"neg_margin": float("inf")}),
    (cl.ProxyAnchorLoss, {"alpha": 0.0}),
    (cl.ExplicitTripletLoss, {"margin": -1.0}),
    (cl.SparseCategoricalFocalCrossentropy, {"gamma": -1.0}),
    (cl.SparseLabelSmoothingCrossentropy, {"label_smoothing": 1.5}),
]


@pytest.mark.parametrize("cls, bad", BAD, ids=lambda v: getattr(v, "__name__", str(v)))
def test_function_and_class_refuse_a_bad_option_alike(cls, bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"`{name}`") as from_class:
        cls(**bad)
    fn = cls().fn
    y = np.array([0, 0, 1, 1])
    x = np.random.default_rng(0).normal(size=(4, 3, 4) if cls is cl.ExplicitTripletLoss else (4, 4)).astype("float32")
    with pytest.raises(ValueError, match=f"`{name}`") as from_function:
        fn(y, x, **bad)
    assert str(from_class.value) == str(from_function.value)


class _GivenValues(keras.losses.Loss):
    """Keras's own reduction of the per-sample values passed as `y_pred`."""

    def call(self, y_true, y_pred):
        return y_pred


@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean", "mean_with_sample_weight", "none"])
@pytest.mark.parametrize("weights", ["none", "flat", "column", "zeros"])
def test_reduce_per_sample_is_keras_reduction(reduction, weights):
    values = np.linspace(-1.0, 2.0, 8).astype("float32")
    sample_weight = {"none": None, "flat": np.arange(8.0), "column": np.arange(8.0)[:, None], "zeros": np.zeros(8)}[
        weights
    ]
    want = _GivenValues(reduction=reduction)(values, values, sample_weight=sample_weight)
    got = reduce_per_sample(keras.ops.convert_to_tensor(values), sample_weight, reduction)
    np.testing.assert_allclose(to_np(got), to_np(want), rtol=1e-6)
