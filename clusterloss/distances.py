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

Numerics: pairwise Euclidean distances come from one matrix product,
`max(|a|^2 + |b|^2 - 2 a.b, 0)`, and the square root is masked, `sqrt(where(d > 0, d, 1)) *
(d > 0)`, so that the zero self-distance and duplicate embeddings give finite (zero) gradients;
`keras.ops.cdist` gives NaN there. float16/bfloat16 inputs are computed in float32. The L2
normalisation divides by `max(||x||, 1e-12)`, like `torch.nn.functional.normalize`, so a zero
embedding gives zeros, not NaN.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_choice, check_embeddings, upcast

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
    """`sqrt(d)` for `d >= 0` whose gradient at `d = 0` is 0 instead of inf/NaN."""
    positive = d > 0
    return ops.sqrt(ops.where(positive, d, ops.ones_like(d))) * ops.cast(positive, d.dtype)


def pairwise_squared_euclidean(x, y=None):
    """`(n, m)` matrix of `||x_i - y_j||^2` by one matrix product, clamped at 0.

    Within one batch (`y is None`) the squared norms are the diagonal of the same Gram
    matrix, so that two identical embeddings get a distance of exactly 0 (not the ~1e-7
    rounding of `|a|^2 + |b|^2 - 2ab` computed by different reductions)."""
    x = upcast(x)
    if y is None:
        gram = ops.matmul(x, ops.transpose(x))
        sq = ops.diagonal(gram)
        return ops.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    y = upcast(y)
    xx = ops.sum(ops.square(x), axis=-1)[:, None]
    yy = ops.sum(ops.square(y), axis=-1)[None, :]
    return ops.maximum(xx + yy - 2.0 * ops.matmul(x, ops.transpose(y)), 0.0)


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

    def _prepare(self, x):
        x = upcast(x)
        return l2_normalize(x) if self.normalize else x

    def pairwise(self, x, y=None):
        """`(n, m)` matrix between the rows of `x` `(n, dim)` and `y` `(m, dim)` (default `x`)."""
        check_embeddings(x, "embeddings")
        x = self._prepare(x)
        y_ = None if y is None else self._prepare(check_embeddings(y, "ref_embeddings"))
        if self.larger_is_closer:
            return ops.matmul(x, ops.transpose(x if y_ is None else y_))
        squared = pairwise_squared_euclidean(x, y_)
        return squared if self.name == "squared_euclidean" else safe_sqrt(squared)

    def paired(self, x, y):
        """`(n,)` vector between row `i` of `x` and row `i` of `y`."""
        x, y = self._prepare(x), self._prepare(y)
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
    "DISTANCES",
    "Distance",
    "get_distance",
    "l2_normalize",
    "pairwise_squared_euclidean",
    "safe_sqrt",
]
