"""Export of the embedding model (clusterloss.models.export, `ClusterModel.export`, `clusterloss
export`): what TensorFlow's SavedModel loader, onnxruntime and LiteRT compute from an export
equals `model.embed` to 1e-5, also for a model fresh from `load_model`, with the input
scaling inside; a format the backend cannot export, a missing package and an existing
export are each one clear line."""

from __future__ import annotations

import importlib.util
import json

import keras
import numpy as np
import pytest
from helpers import BACKEND

import clusterloss as cl
from clusterloss.app.cli.main import main
from clusterloss.app.rundir import RunDir
from clusterloss.models import export
from clusterloss.models.export import ExportUnsupported, Preprocessing, export_embeddings

TOLERANCE = 1e-5
FORMATS = tuple(export.FORMATS)


def exportable(format: str) -> bool:
    return BACKEND in export.NEEDS[format]


def run_export(format: str, path, x: np.ndarray) -> np.ndarray:
    """The embeddings of `x` from an export, computed as a deployment would: without
    clusterloss or Keras, in the format's own runtime (the test is skipped without it)."""
    if format == "saved_model":
        tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed: no SavedModel loader")
        loaded = tf.saved_model.load(str(path))
        return np.asarray(loaded.serve(x))
    if format == "onnx":
        ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if importlib.util.find_spec("ai_edge_litert"):
        from ai_edge_litert.interpreter import Interpreter
    else:
        Interpreter = pytest.importorskip("tensorflow", reason="no LiteRT interpreter").lite.Interpreter
    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def saved_and_reloaded(backbone: keras.Model, path):
    """A ClusterModel with a 10-class softmax head (built, not trained: random weights do),
    saved and loaded again."""
    model = cl.ClusterModel(backbone, num_classes=10)
    model(np.zeros((1, *backbone.input_shape[1:]), "float32"))
    model.save(path)
    return model, keras.saving.load_model(path)


@pytest.fixture(scope="module")
def vectors(digits, tmp_path_factory):
    """`(original, reloaded, x)`: a 64-D -> 3-D model, x: digits as vectors in [0, 1]."""
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model, loaded = saved_and_reloaded(backbone, tmp_path_factory.mktemp("vec") / "m.keras")
    return model, loaded, digits[0][:20]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """`(reloaded, raw)`: a 16x16x1 conv model for images in [0, 1]; `raw`: values 0-255."""
    raw = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 1)).astype("float32")
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2], alpha_initializer="random_uniform")(x)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))
    _, loaded = saved_and_reloaded(keras.Model(inputs, outputs), tmp_path_factory.mktemp("img") / "m.keras")
    return loaded, raw


@pytest.mark.parametrize("format", FORMATS)
def test_vector_model_round_trip_after_load_model(vectors, format, tmp_path):
    model, loaded, x = vectors
    if not exportable(format):
        with pytest.raises(ExportUnsupported, match=" or ".join(export.NEEDS[format])):
            export_embeddings(loaded, tmp_path / "out", format)
        assert not (tmp_path / "out").exists()
        return
    artifact = export_embeddings(loaded, tmp_path / "out", format)  # vectors: nothing to scale
    got = run_export(format, artifact, x)
    np.testing.assert_allclose(got, loaded.embed(x), atol=TOLERANCE)
    np.testing.assert_allclose(got, model.embed(x), atol=TOLERANCE)
    info = json.loads((tmp_path / "out" / export.PREPROCESSING_FILE).read_text())
    assert info["input_shape"] == [None, 64] and info["scale"] == 1.0 and info["embedding_dim"] == 3
    assert info["input_name"] == "features" and info["channels"] is None and info["metric"] == "cosine"
    assert info["check"] is None or info["check"]["max_abs_diff"] < TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


@pytest.mark.parametrize("format", [f for f in FORMATS if exportable(f)])
def test_image_model_takes_raw_pixels(images, format, tmp_path):
    """Raw values 0-255 in, the embeddings of the images in [0, 1] (what it trained on) out."""
    model, raw = images
    artifact = export_embeddings(model, tmp_path / "out", format)  # images: 1/255 by default
    np.testing.assert_allclose(run_export(format, artifact, raw), model.embed(raw / 255), atol=TOLERANCE)
    info = json.loads((tmp_path / "out" / export.PREPROCESSING_FILE).read_text())
    assert info["input_shape"] == [None, 16, 16, 1] and info["image_size"] == [16, 16]
    assert info["channels"] == 1 and info["color"] == "L" and info["dtype"] == "float32"
    assert info["scale"] == pytest.approx(1 / 255) and info["embedding_dim"] == 5


@pytest.mark.parametrize("format", [f for f in ("saved_model", "onnx") if exportable(f)])
def test_uint8_input(images, format, tmp_path):
    model, raw = images
    artifact = export_embeddings(model, tmp_path / "out", format, Preprocessing(1 / 255, "uint8"))
    got = run_export(format, artifact, raw.astype(np.uint8))
    np.testing.assert_allclose(got, model.embed(raw / 255), atol=TOLERANCE)


def test_serving_model_shares_the_backbone(vectors, images):
    model, _, x = vectors
    serving = export.serving_model(model, Preprocessing(0.5))
    assert [w.path for w in serving.weights] == [w.path for w in model.backbone.weights]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(serving(2 * x)), model.embed(x), atol=TOLERANCE)
    assert export.serving_model(model).input.name == "features"  # vectors: nothing inside
    assert len(export.serving_model(model).layers) == 2
    assert export.serving_model(images[0]).get_layer("rescaling").scale == pytest.approx(1 / 255)


def test_cluster_model_export_is_the_embeddings_after_load_model(vectors, tmp_path):
    """Keras's `Model.export` of a reloaded ClusterModel: the embeddings (not the logits), on
    JAX too ("The model provided has never called" before)."""
    _, loaded, x = vectors
    path = tmp_path / "m.onnx"
    loaded.export(path, format="onnx", verbose=False)
    got = run_export("onnx", path, x)
    assert got.shape == (len(x), 3)  # 3-D embeddings, not 10 logits
    np.testing.assert_allclose(got, loaded.embed(x), atol=TOLERANCE)
    if exportable("saved_model"):
        loaded.export(tmp_path / "sm", verbose=False)
        got = run_export("saved_model", tmp_path / "sm", x)
        np.testing.assert_allclose(got, loaded.embed(x), atol=TOLERANCE)
    else:
        with pytest.raises(ExportUnsupported, match="tensorflow or jax"):
            loaded.export(tmp_path / "sm", verbose=False)


def test_an_export_that_does_not_run_is_not_kept(tmp_path):
    """jax2onnx 0.17 writes max pooling as a 4-D MaxPool that onnxruntime refuses: on JAX the
    check in onnxruntime turns that into a one-line ExportUnsupported, and nothing is kept.
    Elsewhere (or once it works on JAX) the export equals Keras."""
    backbone = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.MaxPooling2D(2), keras.layers.Flatten()]
    )
    x = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1)).astype("float32")
    try:
        artifact = export_embeddings(backbone, tmp_path / "out", "onnx")
    except ExportUnsupported as error:
        assert BACKEND == "jax" and error.backends == ("tensorflow", "torch"), error
        assert "\n" not in str(error) and "MaxPool" in str(error)
        assert list(tmp_path.iterdir()) == []
        return
    expected = keras.ops.convert_to_numpy(backbone(x / 255))
    np.testing.assert_allclose(run_export("onnx", artifact, x), expected, atol=TOLERANCE)


def test_existing_export_is_replaced_only_with_overwrite(vectors, tmp_path):
    model, _, x = vectors
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        export_embeddings(model, out, "onnx")
    assert (out / "kept.txt").read_text() == "mine"
    export_embeddings(model, out, "onnx", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "preprocessing.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def hide(monkeypatch, *modules: str) -> None:
    """Make the export believe `modules` are not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        export.importlib.util, "find_spec", lambda name, *a: None if name in modules else find_spec(name, *a)
    )


@pytest.mark.parametrize("format", [f for f in FORMATS if exportable(f)])
def test_missing_package_is_one_line_with_the_pip_command(vectors, format, monkeypatch, tmp_path):
    needed = export.NEEDS[format][BACKEND]
    hide(monkeypatch, *needed)
    with pytest.raises(ImportError) as caught:
        export_embeddings(vectors[0], tmp_path / "out", format)
    message = str(caught.value)
    assert "\n" not in message and f"pip install {' '.join(needed)}" in message
    assert not (tmp_path / "out").exists()


def test_bad_arguments_name_the_argument(vectors, tmp_path):
    model = vectors[0]
    for call, match in [
        (lambda: Preprocessing(0), "`scale` must be a positive number; got 0"),
        (lambda: Preprocessing(1.0, "int32"), "`dtype` must be one of"),
        (lambda: export_embeddings(model, tmp_path / "a", "pt"), "`format` must be one of"),
        (lambda: export_embeddings(model, tmp_path / "a", "onnx", "x"), "`preprocessing` must be"),
        (lambda: export_embeddings(model, tmp_path / "a", "onnx", metric="dot"), "`metric` must be"),
        (lambda: export.serving_model(keras.layers.Dense(2)), "no known input shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_data_scale(tmp_path):
    assert export.data_scale("digits") == 1 / 16 and export.data_scale("fashion-mnist") == 1 / 255
    assert export.data_scale(tmp_path) == 1 / 255  # a folder of images
    np.savez(tmp_path / "u8.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, int))
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2, int))
    assert export.data_scale(tmp_path / "u8.npz") == 1 / 255 and export.data_scale(tmp_path / "f.npz") == 1.0
    for missing in (tmp_path / "missing.npz", ""):
        with pytest.raises(ValueError, match="`source` must be"):
            export.data_scale(missing)


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits run (8x8 images, values /16), trained by the CLI."""
    out = tmp_path_factory.mktemp("export") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", lambda *a, **k: None)
        assert main(["train", "--loss", "softmax", "--epochs", "1", "--embedding-dim", "4",
                     "--train-limit", "200", "--test-limit", "20", "--no-evaluate",
                     "--verbose", "0", "--out", str(out)]) == 0  # fmt: skip
    return out


def fails(capsys, *args) -> str:
    """The one line of stderr of a CLI call that must exit with status 2."""
    with pytest.raises(SystemExit) as caught:
        main(list(args))
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("clusterloss export: error: "), err
    return err


def test_cli_export_of_a_run(digits_run, capsys):
    """Raw digits (values 0-16) into the export: the run's embeddings of the /16 images."""
    from sklearn.datasets import load_digits

    format = "onnx"  # every backend exports ONNX of the digits' MLP
    assert main(["export", str(digits_run), "--format", format]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    out = digits_run / "export" / format
    assert len(printed) == 1 and printed[0].startswith(f"wrote {out / 'model.onnx'}"), printed
    assert "(batch, 8, 8, 1), values 0-16" in printed[0] and "onnxruntime.InferenceSession(" in printed[0]
    raw = load_digits().images[:12, :, :, None].astype("float32")
    model = keras.saving.load_model(digits_run / "model.keras")
    got = run_export(format, out / "model.onnx", raw)
    np.testing.assert_allclose(got, model.embed(raw / 16), atol=TOLERANCE)
    assert json.loads((out / "preprocessing.json").read_text())["scale"] == 1 / 16

    err = fails(capsys, "export", str(digits_run), "--format", format)
    assert f"{out} already exists; pass --overwrite" in err
    assert main(["export", str(digits_run), "--format", format, "--overwrite", "--scale", "0.5"]) == 0
    capsys.readouterr()
    assert json.loads((out / "preprocessing.json").read_text())["scale"] == 0.5
    assert "export" in RunDir(digits_run).holds_run()  # what `train --overwrite` clears


@pytest.mark.parametrize("format", FORMATS)
def test_cli_names_the_backend_or_the_package(digits_run, format, capsys, monkeypatch, tmp_path):
    out = str(tmp_path / "out")
    if not exportable(format):
        err = fails(capsys, "export", str(digits_run), "--format", format, "--out", out)
        assert f"--format {format} needs --backend {' or '.join(export.NEEDS[format])}: " in err
    else:
        hide(monkeypatch, *export.NEEDS[format][BACKEND])
        err = fails(capsys, "export", str(digits_run), "--format", format, "--out", out)
        assert "not installed: pip install " in err and "clusterloss[export]" in err
    assert not (tmp_path / "out").exists()


def test_run_folders_clear_the_export(tmp_path):
    (tmp_path / "export" / "onnx").mkdir(parents=True)
    (tmp_path / "mine.txt").write_text("kept")
    RunDir(tmp_path).clear()
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
