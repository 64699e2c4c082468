"""Own data through `--data`: a generated folder of PNG files trained end to end with a
validation split and the retrieval callback; a gallery of five of its classes indexed from
another folder and searched with held-out image files (open set: the sixth class, not in
the gallery, is "unknown"); an .npz of feature vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from synthetic import make_image_folder

from clusterloss.app.cli.main import main
from clusterloss.app.results import load_run


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """6 classes x 40 PNG files of 20x20 (20% of each class for validation, 20% for testing),
    and a gallery folder of other images of classes 0-4."""
    root = tmp_path_factory.mktemp("own")
    make_image_folder(root / "photos", classes=6, per_class=40)
    make_image_folder(root / "gallery", classes=5, per_class=10, seed=1)
    out = root / "run"
    assert main([
        "train", "--data", str(root / "photos"), "--loss", "softmax", "--image-size", "16",
        "--embedding-dim", "8", "--epochs", "4", "--batch-size", "16", "--val-split", "0.2",
        "--tensorboard", "--verbose", "0", "--out", str(out),
    ]) == 0  # fmt: skip
    return out


def test_folder_trains_with_validation_metrics(folder_run):
    metrics = json.loads((folder_run / "metrics.json").read_text())
    assert metrics["dataset"] == "photos" and metrics["num_classes"] == 6
    assert metrics["num_train"] == 144 and metrics["num_val"] == 48 and metrics["num_test"] == 48
    assert metrics["verification_set"] == "test" and "unseen_map_at_r" not in metrics
    history = metrics["history"]
    assert len(history["val_map_at_r"]) == len(history["loss"]) == 4
    assert all(0 <= v <= 1 for v in history["val_precision_at_1"] + history["val_map_at_r"])
    assert metrics["best_val_map_at_r"] == max(history["val_map_at_r"])
    assert history["val_map_at_r"][metrics["best_epoch"] - 1] == metrics["best_val_map_at_r"]
    assert metrics["best_val_map_at_r"] > 0.5  # coloured blobs: easy to tell apart
    config = metrics["config"]
    assert config["image_size"] == 16 and config["options"] == {"sample_rate": 1.0}
    model, data, _ = load_run(folder_run)
    assert model.backbone.input_shape[1:] == (16, 16, 3)  # RGB detected, resized
    assert len(data.x_test.paths) == 48 and data.x_test.paths[0].endswith(".png")


def test_tensorboard_logs_and_projector(folder_run):
    logs = folder_run / "logs"
    assert len(list((logs / "train").glob("events.out.tfevents.*"))) == 1
    assert len(list((logs / "validation").glob("events.out.tfevents.*"))) == 1
    projector = logs / "projector"
    tensors = np.loadtxt(projector / "tensors.tsv", delimiter="\t")
    metadata = (projector / "metadata.tsv").read_text().splitlines()
    assert tensors.shape == (48, 8) and metadata[0] == "label\tclass\tfile" and len(metadata) == 49
    label, name, path = metadata[1].split("\t")
    assert name == f"class_{label}" and f"/{name}/" in path
    saved = np.load(folder_run / "embeddings.npz")["test"]
    np.testing.assert_allclose(tensors, saved, rtol=1e-4, atol=1e-5)
    config = (projector / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "tensors.tsv"' in config and "single_image_dim: 16" in config
    from PIL import Image

    assert Image.open(projector / "sprite.png").size == (7 * 16, 7 * 16)  # 48 cells, as trained


def test_index_and_search_new_images(folder_run, capsys):
    gallery = folder_run.parent / "gallery"
    # 48 validation images: a rate of 0.05 lets two of them pass against other classes
    assert main(["index", "build", str(folder_run), "--data", str(gallery), "--far", "0.05", "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    assert "50 items of 5 classes" in printed and "48 probes of the run's validation split" in printed
    _, data, _ = load_run(folder_run)
    held_out = np.array(data.x_test.paths)  # test images, never trained on
    known_files = [p for p in held_out if "class_5" not in p]
    unknown_files = [p for p in held_out if "class_5" in p]  # no class_5 in the gallery
    assert main(["search", str(folder_run), "--images", *known_files, *unknown_files, "-k", "3", "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in found] == known_files + unknown_files
    for result in found:
        assert len(result["neighbors"]) == 3
        assert all(n["path"].startswith(str(gallery)) for n in result["neighbors"])
    truth = [p.split("/")[-2] for p in known_files]
    right = [r["neighbors"][0]["class"] == t for r, t in zip(found, truth)]
    assert np.mean(right) >= 0.8, right
    said_known = [r["prediction"] == t for r, t in zip(found, truth)]
    assert np.mean(said_known) >= 0.7, [r["score"] for r in found[: len(truth)]]
    said_unknown = [r["prediction"] == "unknown" for r in found[len(known_files) :]]
    assert np.mean(said_unknown) >= 0.7, [r["score"] for r in found[len(known_files) :]]


def test_npz_feature_vectors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    x = rng.normal(size=(100, 6)) + 3 * np.eye(4, 6)[y]
    np.savez(tmp_path / "vectors.npz", x=x.astype("float32"), y=y * 10 + 1, class_names=np.array(["a", "b", "c", "d"]))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "vectors.npz"), "--loss", "multi-similarity",
                 "--embedding-dim", "4", "--epochs", "2", "--batch-size", "16", "--verbose", "0",
                 "--no-evaluate", "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_classes"] == 4 and metrics["num_test"] == 20 and metrics["num_val"] == 8
    assert metrics["config"]["backbone"] == "auto" and metrics["knn_accuracy"] > 0.5
    model, data, _ = load_run(out)
    assert model.backbone.input_shape == (None, 6) and data.class_names == ["a", "b", "c", "d"]
    raw_ids = np.array([1, 11, 21, 31])[data.y_test[:3]]  # the ids the run was trained on
    np.savez(tmp_path / "queries.npz", x=data.x_test[:3], y=raw_ids)
    capsys.readouterr()
    assert main(["search", str(out), "--npz", str(tmp_path / "queries.npz"), "-k", "2", "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in found] == [f"{tmp_path / 'queries.npz'}[{i}]" for i in range(3)]
    assert [r["class"] for r in found] == [data.class_names[c] for c in data.y_test[:3]]
    for r in found:
        assert len(r["neighbors"]) == 2 and all(n["match"] == (n["class"] == r["class"]) for n in r["neighbors"])
        assert r["neighbors"][0]["path"] is None  # arrays have no files


def test_python_api_takes_image_files(tmp_path):
    """`fit`, `evaluate`, `embed` and `RetrievalEvaluation` take `ImageFiles`: the same
    numbers as the images read into an array (the same batches: no shuffling)."""
    import keras

    import clusterloss as cl

    make_image_folder(tmp_path / "photos", classes=3, per_class=8, size=12)
    paths = sorted(str(p) for p in (tmp_path / "photos").glob("*/*.png"))
    y = np.array([int(p.split("class_")[1][0]) for p in paths])
    files = cl.ImageFiles(paths, (12, 12))
    images = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in paths])  # independent read
    runs = []
    for x in (images, files):
        keras.utils.set_random_seed(0)
        backbone = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
        model = cl.ClusterModel(backbone, num_classes=3)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        watch = cl.RetrievalEvaluation(x[:12], y[:12])
        history = model.fit(
            x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_data=(x[12:], y[12:]), callbacks=[watch]
        )
        runs.append((history.history, model.evaluate(x, y, batch_size=5, verbose=0), model.embed(x, batch_size=7)))
    (h_array, loss_array, emb_array), (h_files, loss_files, emb_files) = runs
    assert sorted(h_files) == sorted(h_array) and "val_map_at_r" in h_files and "val_loss" in h_files
    for key in h_array:
        np.testing.assert_allclose(h_files[key], h_array[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(loss_files, loss_array, rtol=1e-5)
    np.testing.assert_allclose(emb_files, emb_array, rtol=1e-5, atol=1e-6)
    assert emb_files.shape == (24, 4)
