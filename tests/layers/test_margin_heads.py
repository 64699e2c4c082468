"""ArcFace, CosFace, SphereFace and NormFace heads: formulas, pytorch-metric-learning, numerics,
errors, training in a ClusterModel and saving (sharding: models/test_distributed.py)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from helpers import BACKEND, grad, to_np

from clusterloss.layers import ArcFace, CosFace, NormFace, SphereFace
from clusterloss.models import ClusterModel

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ---------------------------------------------------------------- NumPy reference (float64)
def np_cos(x, w):
    x, w = np.asarray(x, "float64"), np.asarray(w, "float64")
    norms = np.linalg.norm(x, axis=1)
    return (x / norms[:, None]) @ (w / np.linalg.norm(w, axis=0)), norms


def np_psi(c, m):
    theta = np.arccos(np.clip(c, -1, 1))
    k = np.minimum(np.floor(theta * m / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def np_logits(kind, x, w, y=None, s=1.0, m=0.0, lam=0.0):
    """Training logits (margin on the target class) or, with `y=None`, inference logits."""
    cos, norms = np_cos(x, w)
    factor = s * norms[:, None] if kind == "sphereface" else s
    if y is None:
        return factor * cos
    c = cos[np.arange(len(y)), y]
    if kind == "arcface":
        theta = np.arccos(np.clip(c, -1, 1))
        target = np.where(c > np.cos(np.pi - m), np.cos(theta + m), c - m * np.sin(m))
    elif kind == "cosface":
        target = c - m
    elif kind == "sphereface":
        target = (lam * c + np_psi(c, m)) / (1 + lam)
    else:
        target = c
    out = cos.copy()
    out[np.arange(len(y)), y] = target
    return factor * out


def make(head, w):
    """`head` built for `w` `(dim, num_classes)` (PML's layout), its kernel set to `w.T`."""
    head.build((None, w.shape[0]))
    head.kernel.assign(w.T)
    return head


def head_grads(head, x, w, y, dtype=None):
    """Mean sparse CE on the margin logits: `(value, [d/d embeddings, d/d w], logits)` for
    `w` `(dim, num_classes)` (the kernel is `w.T`). With `dtype`, the embeddings are cast to
    it inside (gradients go through the cast)."""
    others = [v.value for v in head.non_trainable_variables]
    w = np.ascontiguousarray(w.T)

    def logits_of(xx, ww):
        if dtype is not None:
            xx = keras.ops.cast(xx, dtype)
        return head.stateless_call([ww], others, xx, labels=y)[0]

    def loss(xx, ww):
        return SCE(y, logits_of(xx, ww))

    if BACKEND == "jax":  # one compiled function, not op-by-op dispatch: much faster
        import jax

        def with_logits(xx, ww):
            logits = logits_of(xx, ww)
            return SCE(y, logits), logits

        fn = jax.jit(jax.value_and_grad(with_logits, argnums=(0, 1), has_aux=True))
        (value, logits), (gx, gw) = fn(x, w)
        return float(value), [np.asarray(gx), np.asarray(gw).T], np.asarray(logits)
    gx, gw = grad(loss, x, w)
    return float(to_np(loss(x, w))), [gx, gw.T], to_np(logits_of(x, w))


def forward(head, x, labels):
    """`(head(x, labels=labels), head(x))`: training and inference logits (jit on JAX)."""

    def both(xx):
        return head(xx, labels=labels), head(xx)

    if BACKEND == "jax":
        import jax

        both = jax.jit(both)
    return tuple(to_np(out) for out in both(x))


def data(batch=16, dim=8, classes=6, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(batch, dim))).astype("float32")
    w = rng.normal(size=(dim, classes)).astype("float32")
    y = np.arange(batch) % classes
    return x, w, y


# (kind, our head, numpy kwargs, pytorch-metric-learning loss)
CASES = {
    "arcface": (
        lambda c: ArcFace(c, scale=16.0, margin=0.5),
        dict(s=16.0, m=0.5),
        lambda L, c, d: L.ArcFaceLoss(c, d, margin=math.degrees(0.5), scale=16.0),
    ),
    "arcface-fallback": (  # pi - m = 1.74: about half the random targets take the fallback
        lambda c: ArcFace(c, scale=8.0, margin=1.4),
        dict(s=8.0, m=1.4),
        lambda L, c, d: L.ArcFaceLoss(c, d, margin=math.degrees(1.4), scale=8.0),
    ),
    "cosface": (
        lambda c: CosFace(c, scale=16.0, margin=0.35),
        dict(s=16.0, m=0.35),
        lambda L, c, d: L.CosFaceLoss(c, d, margin=0.35, scale=16.0),
    ),
    "sphereface": (  # no annealing: lambda = 0, as in PML
        lambda c: SphereFace(c, margin=4, base=0.0, lambda_min=0.0),
        dict(s=1.0, m=4),
        lambda L, c, d: L.SphereFaceLoss(c, d, margin=4, scale=1.0),
    ),
    "sphereface-m3": (
        lambda c: SphereFace(c, margin=3, scale=0.5, base=0.0, lambda_min=0.0),
        dict(s=0.5, m=3),
        lambda L, c, d: L.SphereFaceLoss(c, d, margin=3, scale=0.5),
    ),
    "normface": (
        lambda c: NormFace(c, scale=20.0),
        dict(s=20.0),
        lambda L, c, d: L.NormalizedSoftmaxLoss(c, d, temperature=0.05),
    ),
}


def kind_of(name):
    return name.split("-")[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_numpy_formula(name):
    factory, params, _ = CASES[name]
    x, w, y = data()
    train, infer = forward(make(factory(w.shape[1]), w), x, y)
    want = np_logits(kind_of(name), x, w, y, **params)
    np.testing.assert_allclose(train, want, rtol=1e-5, atol=1e-5)
    # No labels (predict, accuracy): scaled cosines with no margin.
    want = np_logits(kind_of(name), x, w, **params)
    np.testing.assert_allclose(infer, want, rtol=1e-5, atol=1e-5)


def at_angles(thetas, dim=4, classes=3):
    """Embeddings at the given angles from class 0's weight (e_0), in the e_0-e_1 plane."""
    w = np.eye(dim, classes, dtype="float32")
    x = np.zeros((len(thetas), dim), "float32")
    x[:, 0], x[:, 1] = np.cos(thetas), np.sin(thetas)
    return 2.5 * x, w, np.zeros(len(thetas), "int64")


def test_target_angles_near_zero_and_pi():
    # Both sides of ArcFace's switch at theta = pi - m, and the ends of [0, pi].
    m = 0.5
    thetas = np.array(
        [1e-3, 0.01, 0.3, np.pi - 0.6, np.pi - 0.51, np.pi - 0.49, np.pi - 0.2, np.pi - 0.01, np.pi - 1e-3]
    )
    x, w, y = at_angles(thetas)
    got = forward(make(ArcFace(3, scale=1.0, margin=m), w), x, y)[0][:, 0]
    want = np.where(thetas < np.pi - m, np.cos(thetas + m), np.cos(thetas) - m * np.sin(m))
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32 cosine: theta to ~1e-4 at 1e-3
    # Where cos(theta + m) would wrap around past pi, the fallback keeps the logit decreasing.
    assert np.all(np.diff(got) < 0)

    got = forward(make(SphereFace(3, base=0.0, lambda_min=0.0), w), x, y)[0][:, 0]
    np.testing.assert_allclose(got, 2.5 * np_psi(np.cos(thetas), 4), atol=1e-4)
    assert np.all(np.diff(got) < 0)  # psi is monotonic on [0, pi]


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_and_gradients_match_pytorch_metric_learning(name):
    torch = pytest.importorskip("torch")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    factory, _, pml_factory = CASES[name]
    x, w, y = data(batch=24, dim=8, classes=6, seed=1)
    cos, _ = np_cos(x, w)
    assert np.abs(cos).max() < 0.999  # away from PML's acos NaN at +-1

    pml = pml_factory(pml_losses, w.shape[1], w.shape[0])
    pml.W.data = torch.tensor(w)
    tx = torch.tensor(x, requires_grad=True)
    expected = pml(tx, torch.tensor(y))
    expected.backward()

    value, (gx, gw), _ = head_grads(make(factory(w.shape[1]), w), x, w, y)
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    for ours, theirs in ((gx, tx.grad.numpy()), (gw, pml.W.grad.numpy())):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "normface"])
def test_finite_where_cos_is_plus_or_minus_one(name):
    # PML's acos has an infinite derivative there (NaN gradients); ours must stay finite,
    # also for a zero embedding.
    factory = CASES[name][0]
    _, w, _ = data(classes=4)
    x = np.stack([w[:, 0], -w[:, 1], 3 * w[:, 2], np.zeros_like(w[:, 0])]).astype("float32")
    y = np.array([0, 1, 2, 3])
    head = make(factory(4), w)
    value, grads, logits = head_grads(head, x, w, y)
    assert np.isfinite(value) and np.all(np.isfinite(logits))
    for g in grads:
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "normface"])
@pytest.mark.parametrize("dtype,size", [("float16", 3e4), ("bfloat16", 1e30)])
def test_half_precision_and_large_values(name, dtype, size):
    factory, params, _ = CASES[name]
    if name == "sphereface":  # its logits grow with ||x||: a softmax over 1e30 logits is noise
        size = min(size, 1e4)
    x, w, y = data(scale=1.0)
    half = keras.ops.convert_to_tensor(size * x / np.abs(x).max(), dtype=dtype)  # up to `size`
    exact = to_np(keras.ops.cast(half, "float32"))  # the half values, exactly, in float32
    head = make(factory(w.shape[1]), w)
    value, (gx, gw), logits = head_grads(head, exact, w, y, dtype=dtype)  # head sees `dtype`
    assert logits.dtype == np.float32
    want = np_logits(name, exact, w, y, **params)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))


def test_mixed_precision_policy_keeps_the_head_in_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        head = ArcFace(5)
        head.build((None, 8))
    finally:
        keras.config.set_dtype_policy(previous)
    assert head.compute_dtype == "float32" and head.kernel.dtype == "float32"
    assert forward(head, np.ones((2, 8), "float16"), np.array([0, 1]))[0].dtype == np.float32


def test_bad_inputs_raise_clear_errors():
    x, w, y = data(classes=6)
    head = make(ArcFace(6), w)
    with pytest.raises(ValueError, match="num_classes=6"):  # NumPy labels: checked on the host
        head(x, labels=np.full(len(x), 6))
    with pytest.raises(ValueError, match=">= 0"):
        head(x, labels=-np.ones(len(x), "int64"))
    for bad in (6, -1):  # tensors are not read on the host: NaN logits stop training instead
        labels = keras.ops.convert_to_tensor(np.full(len(x), bad))
        assert np.isnan(to_np(head(x, labels=labels))).all()
    with pytest.raises(ValueError, match="one-hot"):
        head(x, labels=np.eye(6)[y])
    with pytest.raises(ValueError, match="same batch size"):
        head(x, labels=y[:-1])
    with pytest.raises(ValueError, match="shape"):
        head(x[0], labels=y[:1])
    with pytest.raises(ValueError, match="degrees"):
        ArcFace(6, margin=28.6)
    with pytest.raises(ValueError, match="margin"):
        ArcFace(6, margin=-0.1)
    with pytest.raises(ValueError, match="scale"):
        CosFace(6, scale=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        NormFace(1)
    with pytest.raises(ValueError, match="integer"):
        SphereFace(6, margin=2.5)
    with pytest.raises(ValueError, match="lambda_min"):
        SphereFace(6, lambda_min=-1.0)


def test_sphereface_lambda_annealing():
    x, w, y = data(classes=6)
    head = make(SphereFace(6), w)  # m=4, base 1000, gamma 0.12, power 1, lambda_min 5
    assert head.current_lambda == pytest.approx(1000.0)
    assert float(to_np(head.lambda_at(10_000))) == pytest.approx(5.0)
    for step in (1, 2, 3):
        got = to_np(head(x, labels=y, training=True))
        lam = max(5.0, 1000.0 / (1 + 0.12 * step))
        want = np_logits("sphereface", x, w, y, m=4, lam=lam)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    head(x, labels=y, training=False)  # evaluation: no step
    head(x, training=True)  # forward pass without labels: no step
    assert int(to_np(head.iteration)) == 3
    assert head.current_lambda == pytest.approx(1000.0 / 1.36, rel=1e-6)


@pytest.mark.parametrize("cls", [ArcFace, CosFace, SphereFace, NormFace])
def test_config_round_trip(cls):
    head = cls(7, name="head")
    config = head.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert type(clone) is cls and clone.get_config() == config
    assert head.uses_labels and head.num_classes == 7


def knn_accuracy(model, x_train, y_train, x_test, y_test):
    from sklearn.neighbors import KNeighborsClassifier

    def unit(e):
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    knn = KNeighborsClassifier(n_neighbors=1).fit(unit(model.embed(x_train)), y_train)
    return knn.score(unit(model.embed(x_test)), y_test)


@pytest.mark.slow
def test_arcface_cluster_model_on_digits_improves_knn_and_round_trips(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    split = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    x_train, x_test, y_train, y_test = split
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
    model = ClusterModel(backbone, head=ArcFace(num_classes=10, scale=16.0, margin=0.3))
    model.compile(keras.optimizers.Adam(3e-3), SCE, metrics=["accuracy"])
    before = knn_accuracy(model, x_train, y_train, x_test, y_test)
    history = model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)
    after = knn_accuracy(model, x_train, y_train, x_test, y_test)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after > max(0.75, before + 0.15), (before, after)

    path = tmp_path / "arcface.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.head, ArcFace) and loaded.head.margin == 0.3
    want, got = model.predict(x_test, verbose=0), loaded.predict(x_test, verbose=0)
    for key in ("embeddings", "logits"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)
    # Inference logits are the plain scaled cosines (no margin).
    w = to_np(model.head.kernel).T
    np.testing.assert_allclose(
        want["logits"], np_logits("arcface", want["embeddings"], w, s=16.0), rtol=1e-4, atol=1e-4
    )
