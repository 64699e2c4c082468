"""Proxy-anchor loss: the proxies (state) live in a layer,
`clusterloss.layers.ProxyAnchorHead`; the loss is a stateless function of the labels and the
head's cosine similarities."""

from __future__ import annotations

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import masked_logsumexp, nan_unless_finite, proxy_batch, safe_divide


def _check(margin, alpha):
    check_range(margin, "margin", 0.0)
    check_range(alpha, "alpha", 0.0, low_open=True)


@validated(_check)
def proxy_anchor_loss(y_true, y_pred, margin: float = 0.1, alpha: float = 32.0):
    """Proxy-anchor loss (Kim et al., CVPR 2020) from labels and cosine similarities to the
    class proxies (`y_pred`, `(batch, num_classes)`, e.g. from `ProxyAnchorHead`):

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

    `P+`: the proxies with a positive sample in the batch, `X_p+`/`X_p-`: the samples of
    class `p` / of other classes. This is PML's `ProxyAnchorLoss` (defaults margin 0.1,
    alpha 32). The loss is a sum over proxies, not samples, so every sample gets the batch
    value `L` (their mean is `L`, its gradient is exact; a `sample_weight` only scales it).
    No miner: the loss sees only the similarities to the proxies. NaN/inf gives NaN.
    """
    cos, pos = proxy_batch(y_true, y_pred)
    num_classes = cos.shape[-1]
    neg = ops.logical_not(pos)
    pos_term = masked_logsumexp(-alpha * (cos - margin), pos, axis=0, add_one=True)
    neg_term = masked_logsumexp(alpha * (cos + margin), neg, axis=0, add_one=True)
    with_pos = ops.sum(ops.cast(ops.any(pos, axis=0), cos.dtype))
    total = safe_divide(ops.sum(pos_term), with_pos) + ops.sum(neg_term) / num_classes
    return nan_unless_finite(ops.ones_like(cos[:, 0]) * total, cos)


@register
class ProxyAnchorLoss(MetricLoss, fn=proxy_anchor_loss, regularized=False):
    """Proxy-anchor loss on the output of a `ProxyAnchorHead`; see `proxy_anchor_loss`."""
