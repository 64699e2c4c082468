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

- Euclidean kinds, small inputs (`n * m * dim <= DIRECT_MAX_ELEMENTS`, e.g. 64 x 64 x 256):
  direct differences, `sum((a - b)^2)`: relative error ~1e-7 even for near points, as a
  float32 loop would give.
- Euclidean kinds, larger inputs: one matrix product on embeddings centred on the batch mean,
  `|u|^2 + |v|^2 - 2 u.v` with `u = a - c`, `v = b - c` (exact in exact arithmetic for any
  `c`; `c` is held constant for the gradient). Absolute error of the squared distance
  ~`1e-7 * max |a - c|^2` (about 1e-7 for unit vectors spread over the sphere, less for a
  batch that clusters), so a distance `d` is off by ~`1e-7 / d`: ~1e-5 at `d = 0.01`. This is
  the precision of `torch.cdist`, which PML uses, for more than 25 rows.
- Within one batch (`y is None`) the self-distance and duplicate embeddings are exactly 0.
  The square root is masked (`safe_sqrt`), so zero distances give zero gradients; `keras.ops.cdist`
  gives NaN there.
- cosine and dot: one matrix product; absolute error ~`1e-7 * |a| |b|` (near 1 the float32
  spacing of cosines is already 6e-8).
- NaN or inf inputs, and overflow (e.g. raw squared distances of embeddings at 1e20), give
  NaN/inf entries, never a silent 0; the losses turn any non-finite entry into a NaN loss.
- float16/bfloat16 inputs are computed in float32. The L2 normalisation divides by
  `max(||x||, 1e-12)`-style guarded norms, so a zero embedding gives zeros, not NaN.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_choice, check_embeddings, compute_dtype, upcast

DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot")
_SIMILARITIES = ("cosine", "dot")


def l2_normalize(x, axis: int = -1, return_norm: bool = False):
    """`x / ||x||` along `axis` (and `||x||` with `return_norm=True`), finite everywhere.

    `x` is first divided by its largest absolute entry (held constant for the gradient, which
    is exact because `x / ||x||` does not depend on that factor), so the sum of squares cannot
    overflow even for bfloat16 values near 1e38 upcast to float32. A zero vector gives a zero
    direction and a zero norm, with finite gradients.
    """
    x = upcast(x)
    peak = ops.stop_gradient(ops.max(ops.abs(x), axis=axis, keepdims=True))
    peak = ops.where(peak > 0, peak, ops.ones_like(peak))
    scaled = x / peak
    squares = ops.sum(ops.square(scaled), axis=axis, keepdims=True)
    nonzero = squares > 0
    length = ops.sqrt(ops.where(nonzero, squares, ops.ones_like(squares)))
    if not return_norm:
        return scaled / length
    norm = ops.where(nonzero, peak * length, ops.zeros_like(length))
    return scaled / length, ops.squeeze(norm, axis=axis)


def safe_sqrt(d):
    """`sqrt(d)` for `d >= 0` whose gradient at `d = 0` is 0 instead of inf/NaN; NaN stays NaN."""
    positive = d > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, d, ops.ones_like(d))), d * 0)


# Direct differences up to this many elements (n * m * dim): 4 MiB in float32.
DIRECT_MAX_ELEMENTS = 2**20


def matmul_t(x, y):
    """`x @ y.T`, in float64 for float64 inputs (torch's `keras.ops.matmul` computes float64
    in float32; `einsum` does not)."""
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return ops.einsum("id,jd->ij", x, y)
    return ops.matmul(x, ops.transpose(y))


def _clamp_at_zero(d):
    """`max(d, 0)` that keeps NaN (`ops.maximum(nan, 0)` is 0 on some backends)."""
    return ops.where(d < 0, ops.zeros_like(d), d)


def _is_small(x, y) -> bool:
    n, m, dim = x.shape[0], y.shape[0], x.shape[-1]
    return all(isinstance(v, int) for v in (n, m, dim)) and n * m * dim <= DIRECT_MAX_ELEMENTS


def pairwise_squared_euclidean(x, y=None):
    """`(n, m)` matrix of `||x_i - y_j||^2`; see the module docstring for the precision.

    Direct differences for small inputs, else one matrix product on centred embeddings.
    Within one batch (`y is None`) the squared norms are the diagonal of the same Gram matrix,
    so two identical embeddings are at exactly 0."""
    dtype = compute_dtype(x, y)
    x = upcast(x, dtype)
    y_ = x if y is None else upcast(y, dtype)
    if _is_small(x, y_):
        return ops.sum(ops.square(x[:, None, :] - y_[None, :, :]), axis=-1)
    if y is None:
        u = x - ops.stop_gradient(ops.mean(x, axis=0, keepdims=True))
        gram = matmul_t(u, u)
        uu = vv = ops.diagonal(gram)
    else:
        center = ops.stop_gradient(
            0.5 * (ops.mean(x, axis=0, keepdims=True) + ops.mean(y_, axis=0, keepdims=True)))
        u, v = x - center, y_ - center
        gram = matmul_t(u, v)
        uu, vv = ops.sum(ops.square(u), axis=-1), ops.sum(ops.square(v), axis=-1)
    return _clamp_at_zero(uu[:, None] + vv[None, :] - 2.0 * gram)


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
        check_embeddings(x, "embeddings")
        x = ops.convert_to_tensor(x)
        y = None if y is None else ops.convert_to_tensor(check_embeddings(y, "ref_embeddings"))
        dtype = compute_dtype(x, y)
        x = self._prepare(x, dtype)
        y_ = None if y is None else self._prepare(y, dtype)
        if self.larger_is_closer:
            return matmul_t(x, x if y_ is None else y_)
        squared = pairwise_squared_euclidean(x, y_)
        return squared if self.name == "squared_euclidean" else safe_sqrt(squared)

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
    def from_config(cls, config: dict[str, Any]) -> "Distance":
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
    raise ValueError(
        "`distance` must be one of "
        f"{sorted(DISTANCES)}, a config dict or a Distance; got {identifier!r}."
    )


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
