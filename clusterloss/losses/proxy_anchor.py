"""Proxy-anchor loss: the proxies (state) live in a layer, `ProxyAnchorHead`; the loss is a
stateless function of the labels and the head's cosine similarities."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import (
    check_embeddings,
    check_labels,
    check_range,
    check_same_batch,
    upcast,
)
from clusterloss.distances import l2_normalize
from clusterloss.losses._pairs import MetricLoss, masked_logsumexp, safe_divide


@register
class ProxyAnchorHead(keras.layers.Layer):
    """One trainable proxy per class; `call(embeddings)` returns the cosine similarities
    `(batch, num_classes)` between the embeddings and the proxies, for `ProxyAnchorLoss`.

    The proxies are the columns of `kernel` `(dim, num_classes)` (the layout of `Dense`, so a
    `LayoutMap` entry `"<name>/kernel": (None, "model")` shards the classes). A
    `keras.losses.Loss` cannot own them on every backend (see DESIGN-NOTES), hence this layer.
    Use it as the head of a `ClusterModel`, or as the last layer of a plain model:

        model = ClusterModel(backbone, head=ProxyAnchorHead(num_classes))
        model.compile(keras.optimizers.AdamW(1e-4), loss=ProxyAnchorLoss())
        model.fit(x, y)                      # y: integer labels
        features = model.embed(x)            # the backbone's embeddings, for retrieval

    The paper trains the proxies with a 100x larger learning rate; Keras has no per-weight
    multiplier, but `keras.optimizers.MultiOptimizer` with an `OptimizerMap` keyed on
    `"kernel"` of this layer's path gives them their own optimizer. The similarities are also
    class scores (argmax = nearest proxy), so `metrics=["accuracy"]` works.

    Args:
        num_classes: number of classes (proxies).
        proxy_initializer: initializer of the proxies (the scale does not matter: they are
            normalised). Default `"he_normal"`, close to PML's Kaiming normal.
    """

    def __init__(self, num_classes: int, proxy_initializer: Any = "he_normal", **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2; got {num_classes!r}.")
        self.num_classes = num_classes
        self.proxy_initializer = keras.initializers.get(proxy_initializer)

    def build(self, embedding_shape):
        check_embeddings(keras.KerasTensor(embedding_shape), "embeddings")
        self.kernel = self.add_weight(
            shape=(embedding_shape[-1], self.num_classes),
            initializer=self.proxy_initializer,
            trainable=True,
            name="kernel",
        )

    @property
    def proxies(self):
        """The proxies, `(num_classes, dim)`."""
        return ops.transpose(self.kernel)

    def call(self, embeddings):
        check_embeddings(embeddings, "embeddings")
        x = l2_normalize(embeddings, axis=-1)
        w = l2_normalize(ops.cast(self.kernel, x.dtype), axis=0)
        return ops.matmul(x, w)

    def compute_output_shape(self, embedding_shape):
        return (embedding_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "proxy_initializer": keras.initializers.serialize(self.proxy_initializer),
        }


def proxy_anchor_loss(y_true, y_pred, margin: float = 0.1, alpha: float = 32.0):
    """Proxy-anchor loss (Kim et al., CVPR 2020) from labels and cosine similarities to the
    class proxies (`y_pred`, `(batch, num_classes)`, e.g. from `ProxyAnchorHead`):

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

    `P+`: the proxies with a positive sample in the batch, `X_p+`/`X_p-`: the samples of
    class `p` / of other classes. This is PML's `ProxyAnchorLoss` (defaults margin 0.1,
    alpha 32). The loss is a sum over proxies, not samples, so every sample gets the batch
    value `L` (their mean is `L`, its gradient is exact; a `sample_weight` only scales it).
    No miner: the loss sees only the similarities to the proxies.
    """
    check_range(margin, "margin", 0.0)
    check_range(alpha, "alpha", 0.0, low_open=True)
    check_embeddings(y_pred, "y_pred")
    num_classes = y_pred.shape[-1]
    labels = check_labels(y_true, num_classes=num_classes, name="y_true")
    check_same_batch(labels, y_pred, ("y_true", "y_pred"))
    cos = upcast(y_pred)
    pos = ops.equal(labels[:, None], ops.arange(num_classes)[None, :])
    neg = ops.logical_not(pos)
    pos_term = masked_logsumexp(-alpha * (cos - margin), pos, axis=0, add_one=True)
    neg_term = masked_logsumexp(alpha * (cos + margin), neg, axis=0, add_one=True)
    with_pos = ops.sum(ops.cast(ops.any(pos, axis=0), "float32"))
    total = safe_divide(ops.sum(pos_term), with_pos) + ops.sum(neg_term) / num_classes
    return ops.ones_like(cos[:, 0]) * total


@register
class ProxyAnchorLoss(MetricLoss):
    """Proxy-anchor loss on the output of a `ProxyAnchorHead`; see `proxy_anchor_loss`."""

    def __init__(
        self,
        margin: float = 0.1,
        alpha: float = 32.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "proxy_anchor_loss",
        dtype: str | None = None,
    ):
        check_range(margin, "margin", 0.0)
        check_range(alpha, "alpha", 0.0, low_open=True)
        super().__init__(
            proxy_anchor_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            margin=float(margin),
            alpha=float(alpha),
        )
