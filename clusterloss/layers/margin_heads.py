"""Cosine-softmax heads with angular margins: ArcFace, CosFace, SphereFace (A-Softmax),
L-Softmax, NormFace; and the proxy heads of ProxyAnchorLoss and ProxyNCALoss.

Every head owns its class weight matrix `kernel` of shape `(num_classes, dim)` (one row per
class; see `ClassHead`) and computes the cosine between each L2-normalised embedding and each
L2-normalised kernel row (`CosineHead.cosine`). Called without labels, a head returns the
inference logits (scaled cosines, no margin), which `predict` uses. Called with integer labels,
it returns the training logits, where only the target class of each sample gets the margin;
apply `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` to them.
`ClusterModel(backbone, head=ArcFace(num_classes=...))` does both for you, with one head
computation per training step. Every head takes `sample_rate` for Partial FC (`ClassHead`).

Units: the angular margins of `ArcFace` are in **radians**, as in insightface and the
ArcFace paper (`m = 0.5`). pytorch-metric-learning's `ArcFaceLoss(margin=...)` takes
**degrees** (its default 28.6 is 0.5 rad): `ArcFace(margin=math.radians(pml_margin))`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss import _native
from clusterloss._registry import register
from clusterloss._validation import check_embeddings, check_range
from clusterloss.distances import l2_normalize, matmul_t, safe_sqrt
from clusterloss.layers.class_head import ClassHead


@ops.custom_gradient
def _cosine_to_rows(x, w):
    """`cos[b, j] = x_b . w_j / ||w_j||` for unit rows `x` `(batch, dim)` and raw rows `w`
    `(classes, dim)`. The gradient is written out, so that eager backends build no more
    `(classes, dim)` temporaries than the matrix product's (autodiff makes about twice as
    many through the norm):

        d/dx = (g / ||w||) w,    d/dw_j = sum_b (g_bj / ||w_j||) x_b - (sum_b g_bj cos_bj) w_j / ||w_j||^2.
    """
    inverse = _native.inverse_row_norms(w)
    # plain matrix products (the gradient is this function's own): on torch an einsum, or a
    # product with its own custom gradient, costs 20-40 us more per call
    cos = matmul_t(x, w) * inverse

    def grad(*args, upstream=None):  # (upstream) on JAX/TF, (*args, upstream=) on torch
        g = args[0] if upstream is None else upstream
        scaled = g * inverse
        # sum over the batch as a matrix-vector product: as a reduction, XLA fused it into
        # the (classes, dim) subtraction below and recomputed it for each element of it
        radial = ops.einsum("b,bc->c", ops.ones_like(g[:, 0]), g * cos) * inverse * inverse
        dx = matmul_t(scaled, ops.transpose(w))
        dw = _native.subtract_scaled_rows(matmul_t(ops.transpose(scaled), ops.transpose(x)), radial, w)
        return dx, dw

    return cos, grad


def adacos_fixed_scale(num_classes: int) -> float:
    """AdaCos's fixed scale `sqrt(2) log(C - 1)` for C classes (Zhang et al. 2019, Eq. 14)."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


class CosineHead(ClassHead):
    """Base class of the margin heads: computes the cosine logits from `kernel`.

    A subclass defines `target_logit(cos_target, training)`, the margin applied to the cosine
    of each sample's own class (a `(batch,)` tensor), and may override `logit_factor` (the
    factor from cosines to logits, `scale` here).

    `call(embeddings, labels=None, training=False)`:
      - no labels: inference logits `logit_factor * cos`, shape `(batch, num_classes)`;
      - labels: the same, with the target class of each row replaced by its margin logit
        (over the sampled classes only in a Partial FC training call).
    Logits are float32 whatever the input dtype (float16/bfloat16 are upcast; float64 stays
    float64); under a mixed-precision policy the head defaults to `dtype="float32"`, so its
    kernel and its logits stay in float32 like a softmax layer should.

    Models saved before the kernel became `(num_classes, dim)` (it was `(dim, num_classes)`)
    load as they are: the stored kernel is transposed on load when its shape says so.

    `scale_rule` (default `"fixed"`: s = `scale`) can be an AdaCos rule (Zhang et al., "AdaCos:
    Adaptively Scaling Cosine Logits for Effectively Learning Deep Face Representations", CVPR
    2019), which sets s from the number of classes C instead of a fixed 64 that small class
    counts cannot train with (`scale` is then not used):
      - `"adacos-fixed"`: s = sqrt(2) log(C - 1) (Eq. 14);
      - `"adacos"`: the dynamic rule (Eq. 15-16): s starts at the fixed value and, in every
        training call with labels, before the logits are made, becomes
        `log(B_avg) / cos(min(pi/4, theta_med))`, where
        `B_avg = 1/N sum_i sum_{k != y_i} exp(s_prev cos theta_ik)` over the batch (the sampled
        classes under Partial FC) and `theta_med` is the median (NumPy's: the mean of the two
        middle values for an even batch) of the target angles. The value is the saved
        non-trainable weight `adaptive_scale`; inference uses the last training step's.
    The paper uses no margin (that is `NormFace(n, scale_rule="adacos")`); with ArcFace or CosFace the
    rule is applied as written, the margin only changing the target logit.
    """

    has_margin = True
    scale_rules = ("fixed", "adacos", "adacos-fixed")  # the values of `scale_rule` it takes

    def __init__(self, num_classes: int, scale: float = 64.0, scale_rule: str = "fixed", **kwargs: Any):
        super().__init__(num_classes, **kwargs)
        check_range(scale, "scale", 0.0, low_open=True)
        if scale_rule not in self.scale_rules:
            raise ValueError(
                f"`scale_rule` must be one of {', '.join(map(repr, self.scale_rules))} "
                f"for {type(self).__name__}; got {scale_rule!r}."
            )
        self.scale = float(scale)
        self.scale_rule = scale_rule

    @property
    def initial_scale(self) -> float:
        """s before training: `scale`, or AdaCos's sqrt(2) log(C - 1) (checked when built:
        C >= 3)."""
        return self.scale if self.scale_rule == "fixed" else adacos_fixed_scale(self.num_classes)

    def build(self, embedding_shape):
        if self.scale_rule != "fixed" and self.num_classes < 3:
            raise ValueError(
                f"`scale_rule={self.scale_rule!r}` needs num_classes >= 3 (sqrt(2) "
                f"log(C - 1) is 0 for 2 classes); got {self.num_classes}."
            )
        super().build(embedding_shape)
        if self.scale_rule == "adacos":
            self.adaptive_scale = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.initial_scale),
                trainable=False,
                dtype="float32",
                aggregation="mean",
                name="adaptive_scale",
            )

    @property
    def current_scale(self) -> float:
        """The scale s that inference uses now (AdaCos: the last training step's)."""
        if self.scale_rule == "adacos" and self.built:
            return float(ops.convert_to_numpy(self.adaptive_scale))
        return self.initial_scale

    def adapt_scale(self, embeddings, kernel, labels) -> None:
        """AdaCos's dynamic update of `adaptive_scale` from one batch (see the class doc)."""
        cos = ops.stop_gradient(ops.cast(self.cosine(embeddings, kernel)[0], "float32"))
        previous = ops.convert_to_tensor(self.adaptive_scale)
        target = ops.one_hot(labels, ops.shape(cos)[1], dtype="bool")
        others = ops.where(target, float("-inf"), previous * cos)
        log_b_avg = ops.logsumexp(others) - ops.log(ops.cast(ops.shape(cos)[0], "float32"))
        cos_target = ops.clip(ops.sum(ops.where(target, cos, 0.0), axis=1), -1.0, 1.0)
        theta_med = ops.median(ops.arccos(cos_target))
        scale = log_b_avg / ops.cos(ops.minimum(theta_med, math.pi / 4))
        self.adaptive_scale.assign(ops.where(ops.isfinite(scale), scale, previous))

    def cosine(self, embeddings, kernel=None, scaled: bool = False):
        """`(cos, norms)`: `cos[i, j]` between embedding i and kernel row j (all rows, or the
        rows given in `kernel`), in float32 (float64 stays float64), and the embedding
        norms `||x_i||`, shape `(batch,)`. With `scaled=True`, the logits
        `logit_factor(norms)[i] * cos[i, j]` instead: the factor multiplies the unit
        embeddings, `(batch, dim)`, not the `(batch, classes)` result.

        The kernel is not normalised as a matrix: the product with the raw rows is scaled by
        `1 / ||w_j||` per class, with a hand-written gradient (`_cosine_to_rows`), so a step
        reads and writes the `(num_classes, dim)` kernel a few times instead of about ten;
        that is what a large head costs besides the matrix products. A zero row gives zero
        cosines and a zero gradient."""
        x, norms = l2_normalize(embeddings, axis=-1, return_norm=True)
        if scaled:
            x = x * ops.expand_dims(ops.cast(self.logit_factor(norms), x.dtype), 1)
        w = ops.cast(self.kernel if kernel is None else kernel, x.dtype)
        return _cosine_to_rows(x, w), norms

    def logit_factor(self, norms):
        """From cosines (and margin cosines) to logits, per row `(batch,)`: `scale`."""
        if self.scale_rule == "adacos":
            return ops.ones_like(norms) * ops.cast(self.adaptive_scale, norms.dtype)
        return ops.full_like(norms, self.initial_scale)

    def target_logit(self, cos_target, training: bool = False):
        """The margin function applied to the target cosines, before `logit_factor`."""
        raise NotImplementedError

    def class_logits(self, embeddings, weights: tuple, labels=None, training: bool = False):
        # Besides the matrix products, each (batch, classes) pass is a large part of a big
        # head's step: the logits come scaled out of the product, and the margin replaces
        # only the target entries (`_native.with_target_entries`).
        if training and labels is not None and self.scale_rule == "adacos":
            self.adapt_scale(embeddings, weights[0], labels)
        logits, norms = self.cosine(embeddings, weights[0], scaled=True)
        if labels is None or not self.has_margin:
            return logits
        factor = ops.cast(self.logit_factor(norms), logits.dtype)
        positive = factor > 0
        target = _native.target_entries(logits, labels)
        cos_target = ops.where(positive, target / ops.where(positive, factor, 1.0), target * 0)
        margin_cos = ops.cast(self.target_logit(cos_target, training=training), logits.dtype)
        return _native.with_target_entries(logits, labels, factor * margin_cos)

    def load_own_variables(self, store):
        kernel = store["0"]
        shape, saved = tuple(self.kernel.shape), tuple(kernel.shape)
        if saved != shape and saved == shape[::-1]:  # saved as (dim, num_classes)
            store = {key: store[key] for key in store.keys()}
            store["0"] = np.transpose(np.asarray(kernel))
        super().load_own_variables(store)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "scale_rule": self.scale_rule}


def _check_radians(margin: float, name: str = "margin", high: float = math.pi) -> float:
    value = float(margin)
    if math.isfinite(value) and value > high:
        raise ValueError(
            f"`{name}` is in radians and must be in [0, {high:.4g}]; got {margin!r}. "
            f"If that is degrees (pytorch-metric-learning's convention), pass "
            f"math.radians({margin!r}) = {math.radians(value):.4g}."
        )
    check_range(margin, name, 0.0, high)
    return value


@register
class ArcFace(CosineHead):
    """Additive angular margin (ArcFace): Deng et al., "ArcFace: Additive Angular Margin Loss
    for Deep Face Recognition", CVPR 2019.

    With `cos_j` the cosine between the normalised embedding and class j's normalised
    weight, and `theta_y` the angle to the target class:

        logit_y = s * cos(theta_y + m)        if theta_y + m < pi   (cos_y > cos(pi - m))
        logit_y = s * (cos_y - m * sin(m))    otherwise (insightface's easy_margin=False rule,
                                              which keeps the logit decreasing in theta)
        logit_j = s * cos_j                   for j != y, and for every class at inference.

    `cos(theta + m)` is computed as `cos * cos(m) - sin(theta) * sin(m)` with
    `sin(theta) = sqrt(max(1 - cos^2, 0))` and a zero-gradient guard at `cos = +-1`, so there
    is no `acos`, and gradients stay finite where pytorch-metric-learning's `acos` gives NaN.

    Args:
        num_classes: number of classes (rows of `kernel`, shape `(num_classes, dim)`).
        scale: s, default 64 (paper and insightface).
        margin: m in **radians**, default 0.5 (paper and insightface). pytorch-metric-learning
            `ArcFaceLoss(margin=...)` is in degrees: its 28.6 is 0.5 rad; pass
            `margin=math.radians(pml_margin)`.
        sample_rate, seed, kernel_initializer, kernel_regularizer: see `ClassHead`
            (Partial FC and the class weights).
    """

    def __init__(self, num_classes: int, scale: float = 64.0, margin: float = 0.5, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.margin = _check_radians(margin, "margin", math.pi / 2)

    def target_logit(self, cos_target, training: bool = False):
        m = self.margin
        sin_target = safe_sqrt(1.0 - ops.square(cos_target))
        phi = cos_target * math.cos(m) - sin_target * math.sin(m)
        fallback = cos_target - math.sin(math.pi - m) * m
        return ops.where(cos_target > math.cos(math.pi - m), phi, fallback)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


@register
class CosFace(CosineHead):
    """Additive cosine margin (CosFace / AM-Softmax): Wang et al., "CosFace: Large Margin
    Cosine Loss for Deep Face Recognition", CVPR 2018.

        logit_y = s * (cos_y - m),    logit_j = s * cos_j  (j != y, and at inference).

    Args:
        num_classes: number of classes.
        scale: s, default 64 (paper).
        margin: m, a cosine margin (no unit), default 0.35 (paper); pytorch-metric-learning's
            `CosFaceLoss(margin=0.35, scale=64)` takes the same values.
        sample_rate, seed, kernel_initializer, kernel_regularizer: see `ClassHead`
            (Partial FC and the class weights).
    """

    def __init__(self, num_classes: int, scale: float = 64.0, margin: float = 0.35, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        check_range(margin, "margin", 0.0, 2.0)
        self.margin = float(margin)

    def target_logit(self, cos_target, training: bool = False):
        return cos_target - self.margin

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


@register
class NormFace(CosineHead):
    """Normalised softmax (NormFace): Wang et al., "NormFace: L2 Hypersphere Embedding for
    Face Verification", ACM MM 2017.

        logit_j = s * cos_j    for every class, in training and at inference (no margin).

    Args:
        num_classes: number of classes.
        scale: s, default 20, which is pytorch-metric-learning's `NormalizedSoftmaxLoss`
            default `temperature=0.05` (`s = 1 / temperature`). The paper shows that `s` must
            be large enough for the loss to go down (it learns `s` or fixes it); with n
            classes the loss cannot go below `log(1 + (n - 1) exp(-s n / (n - 1)))`.
        sample_rate, seed, kernel_initializer, kernel_regularizer: see `ClassHead`
            (Partial FC and the class weights).
    """

    has_margin = False

    def __init__(self, num_classes: int, scale: float = 20.0, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)

    def target_logit(self, cos_target, training: bool = False):
        return cos_target


@register
class LargeMarginSoftmax(CosineHead):
    """Large-margin softmax (L-Softmax): Liu et al., "Large-Margin Softmax Loss for
    Convolutional Neural Networks", ICML 2016. A multiplicative angular margin on
    unnormalised weights and embeddings:

        psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi / m, (k + 1) pi / m],
        logit_y = s * ||w_y|| * ||x|| * (lambda * cos_y + psi(theta_y)) / (1 + lambda),
        logit_j = s * ||w_j|| * ||x|| * cos_j = s * w_j . x   for j != y, and at inference.

    `cos(m theta)` is the Chebyshev polynomial `T_m(cos)`, equal to the paper's Eq. 7
    binomial expansion that pytorch-metric-learning evaluates; k comes from comparing `cos`
    with `cos(j pi / m)`: no `acos`, finite gradients at `cos = +-1` (where PML's `acos`
    gives NaN). `SphereFace` is this head with normalised weights (as PML's `SphereFaceLoss`
    subclasses its `LargeMarginSoftmaxLoss`).

    lambda (the paper's annealing towards the margin, Sec. 5 and the authors' Caffe layer)
    follows `lambda = max(lambda_min, base * (1 + gamma * iteration) ** (-power))` with a
    saved, non-trainable `iteration` counter that each training call with valid labels
    advances. The defaults `base=0, lambda_min=0` give lambda = 0, no annealing: exactly
    pytorch-metric-learning's `LargeMarginSoftmaxLoss(num_classes, embedding_size, margin,
    scale)`. For a hard margin (m = 4) the paper anneals from a large lambda (e.g.
    `base=1000, lambda_min=0`, as `SphereFace`'s schedule).

    Units: `margin` is PML's (and the paper's) integer angle multiplier m, no conversion;
    `scale` is PML's extra factor on every logit (default 1: none, as in the paper).

    Args:
        num_classes: number of classes.
        margin: m, an integer >= 1 (m = 1 is the plain softmax without bias), default 4.
        scale: s, default 1.
        base, gamma, power, lambda_min: the lambda schedule above (default: lambda = 0).
        sample_rate, seed, kernel_initializer, kernel_regularizer: see `ClassHead`
            (Partial FC and the class weights).
    """

    normalize_weights = False
    scale_rules = ("fixed",)  # the logits scale with the norms: AdaCos does not apply

    def __init__(
        self,
        num_classes: int,
        margin: int = 4,
        scale: float = 1.0,
        base: float = 0.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(num_classes, scale=scale, **kwargs)
        integral = isinstance(margin, (int, float, np.number)) and float(margin).is_integer()
        if isinstance(margin, bool) or not integral or margin < 1:
            raise ValueError(f"`margin` must be an integer >= 1 (the angle multiplier m); got {margin!r}.")
        for value, name in ((base, "base"), (gamma, "gamma"), (power, "power")):
            check_range(value, name, 0.0)
        check_range(lambda_min, "lambda_min", 0.0)
        self.margin = int(margin)
        self.base = float(base)
        self.gamma = float(gamma)
        self.power = float(power)
        self.lambda_min = float(lambda_min)

    def build(self, embedding_shape):
        super().build(embedding_shape)
        self.iteration = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="int32",
            aggregation="only_first_replica",
            name="iteration",
        )

    def lambda_at(self, iteration):
        """lambda for a given iteration count (a tensor or a number)."""
        it = ops.cast(iteration, "float32")
        value = self.base * ops.power(1.0 + self.gamma * it, -self.power)
        return ops.maximum(value, self.lambda_min)

    @property
    def current_lambda(self) -> float:
        """lambda that a non-training call with labels uses now (the last training step's)."""
        iteration = self.iteration if self.built else 0
        return float(ops.convert_to_numpy(self.lambda_at(iteration)))

    def psi(self, cos):
        """`(-1)^k cos(m theta) - 2k` of the paper, from `cos = cos(theta)`."""
        m = self.margin
        c = cos
        t_prev, t_m = ops.ones_like(c), c  # Chebyshev T_0, T_1; T_{n+1} = 2c T_n - T_{n-1}
        for _ in range(m - 1):
            t_prev, t_m = t_m, 2.0 * c * t_m - t_prev
        k = ops.zeros_like(c)
        for j in range(1, m):
            k = k + ops.cast(c <= math.cos(j * math.pi / m), c.dtype)
        sign = 1.0 - 2.0 * ops.mod(k, 2.0)
        return sign * t_m - 2.0 * k

    def on_train_step(self, valid) -> None:
        self.iteration.assign(self.iteration + ops.cast(valid, "int32"))

    def target_logit(self, cos_target, training: bool = False):
        lam = ops.cast(self.lambda_at(self.iteration), cos_target.dtype)
        return (lam * cos_target + self.psi(cos_target)) / (1.0 + lam)

    def logit_factor(self, norms):
        return self.scale * norms

    def class_logits(self, embeddings, weights: tuple, labels=None, training: bool = False):
        logits = super().class_logits(embeddings, weights, labels, training)
        if self.normalize_weights:
            return logits
        w = ops.cast(weights[0], logits.dtype)
        return logits * safe_sqrt(ops.einsum("cd,cd->c", w, w))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "base": self.base,
            "gamma": self.gamma,
            "power": self.power,
            "lambda_min": self.lambda_min,
        }


@register
class SphereFace(LargeMarginSoftmax):
    """Multiplicative angular margin (SphereFace / A-Softmax): Liu et al., "SphereFace: Deep
    Hypersphere Embedding for Face Recognition", CVPR 2017.

    `LargeMarginSoftmax` with normalised class weights (embeddings are not normalised:
    logits scale with `||x||`, so, unlike the cosine heads, huge embeddings give huge
    logits, which a float32 softmax cannot use):

        psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi / m, (k + 1) pi / m],
        logit_y = s * ||x|| * (lambda * cos_y + psi(theta_y)) / (1 + lambda),
        logit_j = s * ||x|| * cos_j   for j != y, and for every class at inference.

    lambda anneals as in the authors' Caffe code (`MarginInnerProduct` layer), with the
    schedule of `LargeMarginSoftmax`; here the defaults are the paper's code
    (sphereface_model.prototxt): m = 4, base 1000, gamma 0.12, power 1, lambda_min 5. The
    counter is saved with the model, so training resumes where the schedule was.
    `base=0, lambda_min=0` gives the plain A-Softmax of the paper's Eq. with no annealing,
    which is what pytorch-metric-learning's `SphereFaceLoss(margin=m, scale=s)` computes.

    Args:
        num_classes: number of classes.
        margin: m, an integer >= 1 (an angle multiplier, no unit), default 4.
        scale: s, an extra factor on all logits, default 1 (none, as in the paper; the same as
            pytorch-metric-learning's `scale`).
        base, gamma, power, lambda_min: the lambda schedule (see `LargeMarginSoftmax`).
        sample_rate, seed, kernel_initializer, kernel_regularizer: see `ClassHead`
            (Partial FC and the class weights).
    """

    normalize_weights = True

    def __init__(
        self,
        num_classes: int,
        margin: int = 4,
        scale: float = 1.0,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
        **kwargs: Any,
    ):
        super().__init__(
            num_classes,
            margin=margin,
            scale=scale,
            base=base,
            gamma=gamma,
            power=power,
            lambda_min=lambda_min,
            **kwargs,
        )


class ProxyHead(CosineHead):
    """Base class of the proxy heads: one trainable proxy per class, the rows of `kernel`
    `(num_classes, dim)` as in every `CosineHead`; `call(embeddings)` returns the cosine
    similarities `(batch, num_classes)` between the embeddings and the proxies, with no scale
    and no margin (the proxy loss applies its own), so it needs no labels. A
    `keras.losses.Loss` cannot own the proxies on every backend (see DESIGN-NOTES), hence a
    layer. The similarities are also class scores (argmax = nearest proxy), so
    `metrics=["accuracy"]` works. A weight regularizer (PML's `weight_regularizer`) is a
    `kernel_regularizer`, e.g. `RegularFaceRegularizer()`."""

    uses_labels = False

    def __init__(self, num_classes: int, proxy_initializer: Any, **kwargs: Any):
        super().__init__(num_classes, scale=1.0, kernel_initializer=proxy_initializer, **kwargs)

    @property
    def proxies(self):
        """The proxies, `(num_classes, dim)` (the kernel itself)."""
        return self.kernel

    def call(self, embeddings, labels=None, training: bool = False):
        check_embeddings(embeddings)
        return self.cosine(embeddings)[0]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for key in ("scale", "scale_rule", "sample_rate", "seed"):
            del config[key]
        config["proxy_initializer"] = config.pop("kernel_initializer")
        return config


@register
class ProxyAnchorHead(ProxyHead):
    """The proxies of `ProxyAnchorLoss` (Kim et al., "Proxy Anchor Loss for Deep Metric
    Learning", CVPR 2020); see `ProxyHead`:

        model = ClusterModel(backbone, head=ProxyAnchorHead(num_classes, name="proxies"))
        model.compile(keras.optimizers.AdamW(1e-4), loss=ProxyAnchorLoss())

    The paper trains the proxies with a 100x larger learning rate: give them their own
    optimizer with `keras.optimizers.MultiOptimizer` keyed on `".*proxies/kernel"`.

    Args:
        num_classes: number of classes (proxies).
        proxy_initializer: initializer of the proxies (their scale does not matter: they are
            normalised). Default `"he_normal"`, close to PML's Kaiming normal.
    """

    def __init__(self, num_classes: int, proxy_initializer: Any = "he_normal", **kwargs: Any):
        super().__init__(num_classes, proxy_initializer=proxy_initializer, **kwargs)


@register
class ProxyNCAHead(ProxyHead):
    """The proxies of `ProxyNCALoss` (Movshovitz-Attias et al., "No Fuss Distance Metric
    Learning using Proxies", ICCV 2017); see `ProxyHead`:

        model = ClusterModel(backbone, head=ProxyNCAHead(num_classes, name="proxies"))
        model.compile("adam", loss=ProxyNCALoss(softmax_scale=1.0))

    Args:
        num_classes: number of classes (proxies).
        proxy_initializer: initializer of the proxies; default `None` is a standard normal
            (`RandomNormal(stddev=1)`, PML's `torch.nn.init.normal_`). The scale does not
            change the loss (proxies are normalised), only the size of a step relative to it.
    """

    def __init__(self, num_classes: int, proxy_initializer: Any = None, **kwargs: Any):
        if proxy_initializer is None:
            proxy_initializer = keras.initializers.RandomNormal(stddev=1.0)
        super().__init__(num_classes, proxy_initializer=proxy_initializer, **kwargs)
