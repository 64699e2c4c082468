"""Layers that own class weights or centers compute in float32 under a mixed policy."""

from __future__ import annotations

from typing import Any

import keras

HALF = ("float16", "bfloat16")


def full_precision(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Layer keyword arguments with `dtype="float32"` when none is given and the global
    dtype policy computes or stores in float16/bfloat16 (`"mixed_float16"`, ...).

    Class weights, centers and logits then stay in float32, as a softmax output layer should
    under mixed precision; Keras casts the half-precision embeddings to float32 on the way
    in. Under `"float64"` the layer follows the policy and computes in float64.
    """
    if kwargs.get("dtype") is None:
        policy = keras.config.dtype_policy()
        if policy.compute_dtype in HALF or policy.variable_dtype in HALF:
            kwargs = {**kwargs, "dtype": "float32"}
    return kwargs
