"""Distances and similarities shared by every pair/triplet loss and miner.

A `Distance` turns embeddings into a pairwise matrix (`pairwise`) or a row-wise vector
(`paired`). Four kinds, by name:

| name                  | value                      | larger means | normalises by default |
| --------------------- | -------------------------- | ------------ | --------------------- |
| `"euclidean"`         | `||a - b||`                | farther      | yes (as PML's `LpDistance`) |
| `"squared_euclidean"` | `||a - b||^2`              | farther      | yes                   |
| `"cosine"`            | `a.b / (||a|| ||b||)`      | closer       | always (PML's `CosineSimilarity`) |
| `"dot"`               | `a.b`                      | closer       | no (*)                |

(*) PML's `DotProductSimilarity()` normalises by default, which makes it the cosine; `"dot"`
here is the raw dot product, PML's `DotProductSimilarity(normalize_embeddings=False)`
(`get_distance("dot", normalize=True)` is the cosine again).

`larger_is_closer` tells similarities from distances; `margin(x, y)` is PML's convention for
"how much closer y is than x" (`x - y` for a distance, `y - x` for a similarity), which lets one
loss formula serve both kinds.

Numerics and precision (float32; float64 inputs are computed in float64 where the backend has
it: not on JAX, whose default x64-off mode makes every float64 array float32):

- Euclidean kinds, small inputs (`n * m * dim <= DIRECT_MAX_ELEMENTS = 2**17`, e.g. a
  batch of 32 x 128 or 64 x 32, and PML's 16-point miner tests): direct differences,
  `sum((a - b)^2)`, relative error ~1e-7 however near the points (a float32 loop's).
  Identical embeddings are at exactly 0.
- Euclidean kinds, larger inputs: one matrix product on embeddings centred on the batch mean,
  `[u, |u|^2, 1] . [-2 v, 1, |v|^2]` with `u = a - c`, `v = b - c` (exact in exact arithmetic
  for any `c`, which is held constant for the gradient). The squared distance has an absolute
  error of ~`1e-7 * max |a - c|^2`, so a distance `d` is off by ~`1e-7 * max |a - c|^2 / d`:
  for unit vectors spread over the sphere ~4e-5 at `d = 0.01` (measured on 512 unit vectors
  in 128-d, 8 per cluster) and ~3e-4 for identical embeddings. This is the precision of `torch.cdist` (which PML uses) for more than 25 rows;
  centring makes it better for batches that cluster (5e-8 for PML's 16 points within 15
  degrees). Direct differences at every size would cost ~10x in eager PyTorch.
- The Euclidean square root is masked: squared distances below 1e-30 (and negative rounding
  noise) give a distance below 1e-15 (0 for a negative one) with a zero gradient
  (`keras.ops.cdist` gives NaN gradients at zero distance).
- cosine and dot: one matrix product; absolute error ~`1e-7 * |a| |b|` (near 1 the float32
  spacing of cosines is already 6e-8).
- NaN or inf inputs, and overflow (e.g. raw squared distances of embeddings at 1e20), give
  NaN/inf entries, never a silent 0; `pairwise_checked` flags them (from the norms, without a
  pass over the matrix) and the losses turn the flag into a NaN loss.
- float16/bfloat16 inputs are computed in float32. The L2 normalisation divides by
  `max(||x||, 1e-12)`-style guarded norms, so a zero embedding gives zeros, not NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from clusterloss import _native
from clusterloss._registry import register
from clusterloss._validation import check_choice, check_embeddings, compute_dtype, upcast

DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")
_SIMILARITIES = ("cosine", "dot")


def l2_normalize(x, axis: int = -1, return_norm: bool = False):
    """`x / ||x||` along `axis` (and `||x||` with `return_norm=True`), finite for finite `x`.

    `x` is first divided by its largest absolute entry (held constant for the gradient, which
    is exact because `x / ||x||` does not depend on that factor), so the sum of squares cannot
    overflow even for bfloat16 values near 1e38 upcast to float32. A zero vector gives a zero
    direction and a zero norm, with finite gradients; a vector with a NaN or inf, a NaN
    direction and a NaN norm. `_native.l2_normalize`: native calls on PyTorch.
    """
    return _native.l2_normalize(x, axis, return_norm)


def safe_sqrt(d):
    """`sqrt(d)` for `d >= 0` whose gradient at `d = 0` is 0 instead of inf/NaN; NaN stays NaN."""
    positive = d > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, d, ops.ones_like(d))), d * 0)


# Direct differences up to this many elements (n * m * dim, 512 KiB in float32), else one
# matrix product: direct differences cost ~n * m * dim elementwise work on the forward and the
# backward pass, 10x a matrix product in eager PyTorch at 128 x 128 x 128.
DIRECT_MAX_ELEMENTS = 2**17


def matmul_t(x, y):
    """`x @ y.T`, in float64 for float64 inputs (torch's `keras.ops.matmul` computes float64
    in float32; `einsum` does not). (`_native.matmul_t`: one native call on PyTorch.)"""
    return _native.matmul_t(x, y)


def _clamp_at_zero(d):
    """`max(d, 0)` that keeps NaN (`relu` keeps it on the three backends; a select, the other
    way to keep it, costs ~1 ms per 512 x 512 pass forward and backward on one torch
    thread, 30 times a multiply)."""
    return ops.relu(d)


_TINY_ROOT = 1e-15  # distances below this (squared: 1e-30) have a zero gradient
# Squared norms whose sum stays below this cannot overflow a distance or similarity matrix.
_OVERFLOW = {"float32": float(np.finfo("float32").max) / 64, "float64": float(np.finfo("float64").max) / 64}


@ops.custom_gradient
def _masked_sqrt(d2):
    """`sqrt(max(d2, 0))`, NaN kept, with a zero gradient where `d2 < 1e-30` (the value there is
    below 1e-15). The gradient `g / (2 sqrt(d2))` is written out and masks by multiplying:
    selects (two forward, two more in their gradients) cost ~1 ms each per 512 x 512 pass on
    one torch thread, 30 times a multiply, and each pass the forward saves is one less
    `(n, m)` array."""
    root = ops.sqrt(ops.relu(d2))

    def grad(*args, upstream=None):  # (upstream) on JAX/TF, (*args, upstream=) on torch
        g = args[0] if upstream is None else upstream
        keep = ops.cast(root >= _TINY_ROOT, root.dtype)
        return g * (0.5 * keep) / (root + (1.0 - keep))

    return root, grad


def _is_small(x, y) -> bool:
    n, m, dim = x.shape[0], y.shape[0], x.shape[-1]
    return all(isinstance(v, int) for v in (n, m, dim)) and n * m * dim <= DIRECT_MAX_ELEMENTS


def _gram(x, y):
    """`||x_i - y_j||^2` by one matrix product on centred embeddings, `|u|^2 + |v|^2 - 2 u.v`
    with `u = x - c`, `v = y - c` (`c` the mean, held constant), the norms folded into the
    product as `[u, |u|^2, 1] . [-2 v, 1, |v|^2]` (as `torch.cdist`)."""
    center = ops.stop_gradient(ops.mean(ops.concatenate([x, y], axis=0) if y is not x else x, axis=0, keepdims=True))
    u = x - center
    v = u if y is x else y - center
    uu = ops.sum(u * u, axis=-1, keepdims=True)
    vv = uu if y is x else ops.sum(v * v, axis=-1, keepdims=True)
    one = ops.ones_like(uu)
    return matmul_t(
        ops.concatenate([u, uu, one], axis=-1),
        ops.concatenate([-2.0 * v, one if y is x else ops.ones_like(vv), vv], axis=-1),
    )


def _squared_distances(x, y):
    """Unclamped `||x_i - y_j||^2` (`y is x` within one batch): direct differences for small
    inputs, else one matrix product."""
    if _is_small(x, y):
        return ops.sum(ops.square(x[:, None, :] - y[None, :, :]), axis=-1)
    return _gram(x, y)


def pairwise_squared_euclidean(x, y=None):
    """`(n, m)` matrix of `||x_i - y_j||^2` (`y` defaults to `x`): direct differences for small
    inputs, else one matrix product on centred embeddings; see the module docstring for the
    precision of each."""
    dtype = compute_dtype(x, y)
    x = upcast(x, dtype)
    return _clamp_at_zero(_squared_distances(x, x if y is None else upcast(y, dtype)))


@register
class Distance:
    """A distance or similarity between embeddings; see the module docstring.

    Args:
        name: `"euclidean"`, `"squared_euclidean"`, `"cosine"` or `"dot"`.
        normalize: L2-normalise the embeddings first. `None` takes the default of the kind
            (True for the Euclidean kinds and cosine, False for dot). Cosine is always
            normalised: `normalize=False` with it is an error (use `"dot"`).
    """

    def __init__(self, name: str = "euclidean", normalize: bool | None = None):
        check_choice(name, "distance", DISTANCES)
        if normalize is None:
            normalize = name != "dot"
        if name == "cosine" and not normalize:
            raise ValueError(
                "`normalize` must be True for the 'cosine' distance; got False "
                "(use distance='dot' for an unnormalised dot product)."
            )
        self.name = name
        self.normalize = bool(normalize)

    @property
    def larger_is_closer(self) -> bool:
        """True for similarities (cosine, dot), False for distances."""
        return self.name in _SIMILARITIES

    def _prepare(self, x, dtype: str):
        x = upcast(x, dtype)
        return l2_normalize(x) if self.normalize else x

    def pairwise(self, x, y=None):
        """`(n, m)` matrix between the rows of `x` `(n, dim)` and `y` `(m, dim)` (default `x`),
        in float64 if either is float64, else float32."""
        return self.pairwise_checked(x, y)[0]

    def pairwise_checked(self, x, y=None):
        """`(matrix, finite)`: the matrix of `pairwise` and a scalar bool, False when an entry
        can be NaN or inf (NaN/inf embeddings, or norms so large that the matrix overflows).
        The check costs O((n + m) dim), not a pass over the matrix: every entry is bounded by
        `2 (|a|^2 + |b|^2)` of the (normalised) embeddings."""
        check_embeddings(x, "embeddings")
        x = ops.convert_to_tensor(x)
        y = None if y is None else ops.convert_to_tensor(check_embeddings(y, "ref_embeddings"))
        dtype = compute_dtype(x, y)
        x = self._prepare(x, dtype)
        y_ = x if y is None else self._prepare(y, dtype)
        peak = ops.max(ops.sum(x * x, axis=-1))
        finite = (2.0 * peak if y is None else peak + ops.max(ops.sum(y_ * y_, axis=-1))) < _OVERFLOW[dtype]
        if self.larger_is_closer:
            return matmul_t(x, y_), finite
        squared = _squared_distances(x, y_)
        if self.name == "squared_euclidean":
            return _clamp_at_zero(squared), finite
        return _masked_sqrt(squared), finite

    def paired(self, x, y):
        """`(n,)` vector between row `i` of `x` and row `i` of `y`."""
        x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
        dtype = compute_dtype(x, y)
        x, y = self._prepare(x, dtype), self._prepare(y, dtype)
        if self.larger_is_closer:
            return ops.sum(x * y, axis=-1)
        squared = ops.sum(ops.square(x - y), axis=-1)
        return squared if self.name == "squared_euclidean" else safe_sqrt(squared)

    def margin(self, x, y):
        """`x - y` for a distance, `y - x` for a similarity (PML's `BaseDistance.margin`)."""
        return y - x if self.larger_is_closer else x - y

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "normalize": self.normalize}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Distance:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Distance) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((self.name, self.normalize))

    def __repr__(self) -> str:
        return f"Distance({self.name!r}, normalize={self.normalize})"


def get_distance(identifier: Any = "euclidean", normalize: bool | None = None) -> Distance:
    """A `Distance` from a name, a config dict (`Distance.get_config()`), or a `Distance`.

    `get_distance("euclidean")` is PML's default `LpDistance()` (L2-normalised embeddings);
    `get_distance("euclidean", normalize=False)` is the raw Euclidean distance.
    """
    if isinstance(identifier, Distance):
        if normalize is None or normalize == identifier.normalize:
            return identifier
        return Distance(identifier.name, normalize)
    if isinstance(identifier, dict):
        config = dict(identifier.get("config", identifier))
        if normalize is not None:
            config["normalize"] = normalize
        return Distance.from_config(config)
    if isinstance(identifier, str):
        return Distance(identifier, normalize)
    raise ValueError(f"`distance` must be one of {sorted(DISTANCES)}, a config dict or a Distance; got {identifier!r}.")


__all__ = [
    "DIRECT_MAX_ELEMENTS",
    "DISTANCES",
    "Distance",
    "get_distance",
    "l2_normalize",
    "matmul_t",
    "pairwise_squared_euclidean",
    "safe_sqrt",
]
