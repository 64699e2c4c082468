"""The recognition path of the CLI on real models: `index build` with calibration, `index
add` / `index remove` (enrolment without retraining), `calibrate`, `search`; Olivetti as
folders (30 people trained, 5 unseen enrolled, 5 unseen strangers) at the defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import fails
from synthetic import make_image_folder

from clusterloss.app.cli.main import main


def run_main(capsys, *args) -> str:
    assert main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def search(capsys, run, files) -> list[dict]:
    return [
        json.loads(line)
        for line in run_main(capsys, "search", str(run), "--images", *map(str, files), "-k", "3", "--json").splitlines()
    ]


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """5 colour classes trained (16x16), a calibration folder and newcomers of 2 other colours."""
    root = tmp_path_factory.mktemp("recognition")
    make_image_folder(root / "photos", classes=5, per_class=24, size=16)
    make_image_folder(root / "more", classes=8, per_class=8, size=16, seed=1)
    out = root / "run"
    assert main(["train", "--data", str(root / "photos"), "--loss", "softmax", "--image-size", "16",
                 "--embedding-dim", "8", "--epochs", "4", "--batch-size", "16", "--verbose", "0",
                 "--no-evaluate", "--out", str(out)]) == 0  # fmt: skip
    return root, out


def test_enrol_remove_reenrol_change_the_answers(colour_run, capsys):
    root, out = colour_run
    printed = run_main(capsys, "index", "build", str(out), "--verbose", "0")
    assert "items of 5 classes" in printed and "<- chosen" in printed and "note: FAR 0.01 needs" in printed
    saved = json.loads((out / "index" / "calibration.json").read_text())
    threshold = saved["calibration"]["threshold"]
    assert saved["calibration"]["far"] == pytest.approx(1 / saved["calibration"]["num_strangers"])
    newcomer = sorted((root / "more" / "class_6").iterdir())
    found = search(capsys, out, newcomer[4:])
    assert all(r["neighbors"][0]["class"] != "class_6" for r in found)  # nobody by that name yet
    printed = run_main(capsys, "index", "add", str(out), "--data", str(root / "more" / "class_6"),
                       "--class", "magenta", "--verbose", "0")  # fmt: skip
    assert printed.startswith("enrolled 8 images") and "6 classes" in printed
    found = search(capsys, out, newcomer[:2])
    assert [r["neighbors"][0]["class"] for r in found] == ["magenta"] * 2
    assert all(r["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-5) for r in found)  # itself, enrolled
    assert all(n["path"].endswith(".png") for r in found for n in r["neighbors"])
    printed = run_main(capsys, "index", "remove", str(out), "--path", str(newcomer[0]))
    assert printed.startswith("removed 1 items")
    assert search(capsys, out, newcomer[:1])[0]["neighbors"][0]["path"] != str(newcomer[0])
    run_main(capsys, "index", "remove", str(out), "--class", "magenta")
    assert all(r["neighbors"][0]["class"] != "magenta" for r in search(capsys, out, newcomer[:2]))
    # a folder of class sub-folders: the classes by folder name
    run_main(capsys, "index", "add", str(out), "--data", str(root / "more"), "--verbose", "0")
    answers = search(capsys, out, newcomer[:2])
    assert [r["neighbors"][0]["class"] for r in answers] == ["class_6"] * 2
    # the same probes, a changed gallery: recalibrated, not dropped
    assert json.loads((out / "index" / "calibration.json").read_text())["calibration"]["threshold"] is not None
    assert "no class 'nobody' in the gallery" in fails(capsys, "index", "remove", str(out), "--class", "nobody")
    (root / "empty").mkdir()
    assert "no image files" in fails(capsys, "index", "add", str(out), "--data", str(root / "empty"), "--class", "x")
    assert threshold is not None


def test_failed_build_keeps_the_old_gallery_and_calibrate(colour_run, capsys, monkeypatch):
    root, out = colour_run
    run_main(capsys, "index", "build", str(out), "--verbose", "0")
    before = (out / "index" / "CURRENT").read_text()

    def files():
        return sorted(p.name for p in (out / "index").iterdir() if not p.name.endswith(("-wal", "-shm")))

    before_files = files()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("clusterloss.app.gallery.write_calibration", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["index", "build", str(out), "--data", str(root / "more"), "--verbose", "0"])
    monkeypatch.undo()
    assert (out / "index" / "CURRENT").read_text() == before
    assert files() == before_files  # the new database is gone
    # calibrate on a folder of images not in the gallery, at a TAR target
    printed = run_main(capsys, "calibrate", str(out), "--calibrate", str(root / "more"), "--tar", "0.5")
    assert "probes of " + str(root / "more") in printed and "<- chosen" in printed
    saved = json.loads((out / "index" / "calibration.json").read_text())["calibration"]
    assert saved["target"] == {"tar": 0.5} and saved["tar"] >= 0.5 and saved["num_strangers"] == 64
    err = fails(capsys, "calibrate", str(out), "--calibrate", str(root / "photos"))
    assert "images that are in the gallery cannot calibrate it" in err
    assert "expected a finite number; got 'nan'" in fails(capsys, "index", "build", str(out), "--far", "nan")
    assert "must be in (0, 1]" in fails(capsys, "index", "build", str(out), "--far", "0")


def test_npz_queries_keep_the_run_s_class_ids(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat([1, 2, 3], 30)  # ids 1-3: trained as 0-2, named "1"-"3"
    x = (np.eye(3)[y - 1] * 3 + rng.normal(0, 0.3, (90, 3))).astype(np.float32)
    np.savez(tmp_path / "points.npz", x=x, y=y)
    out = tmp_path / "run"
    run_main(capsys, "train", "--data", str(tmp_path / "points.npz"), "--loss", "softmax", "--epochs", "3",
             "--embedding-dim", "4", "--verbose", "0", "--no-evaluate", "--out", str(out))  # fmt: skip
    np.savez(tmp_path / "q.npz", x=x[[0, 30, 60]], y=y[[0, 30, 60]])
    found = [
        json.loads(line)
        for line in run_main(capsys, "search", str(out), "--npz", str(tmp_path / "q.npz"), "--json").splitlines()
    ]
    assert [r["class"] for r in found] == ["1", "2", "3"]
    assert all(r["neighbors"][0]["match"] for r in found)
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 5), np.float32))
    assert "queries of shape (5,) per sample; the model takes (3,)" in fails(
        capsys, "search", str(out), "--npz", str(tmp_path / "bad.npz")
    )
    import keras  # a diverged model: NaN weights give NaN embeddings, said in one line

    model = keras.saving.load_model(out / "model.keras")
    layer = model.backbone.layers[-1]
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    model.save(out / "model.keras")
    err = fails(capsys, "search", str(out), "--npz", str(tmp_path / "q.npz"))
    assert re.search(r"the model gives NaN or inf embeddings for (\d+) of \1 inputs of the train set", err), err


def test_readme_digits_run_gets_a_reachable_threshold_or_a_refusal(tmp_path, capsys):
    out = tmp_path / "digits"
    run_main(capsys, "train", "--epochs", "3", "--verbose", "0", "--no-evaluate", "--out", str(out))
    printed = run_main(capsys, "index", "build", str(out), "--verbose", "0")
    saved = json.loads((out / "index" / "calibration.json").read_text())
    if saved["calibration"] is None:
        assert "score 1.0" in saved["error"] and "no open-set threshold" in printed
        return
    threshold = saved["calibration"]["threshold"]
    assert threshold <= 1.0 and saved["calibration"]["tar"] > 0  # some enrolled query passes it
    found = [
        json.loads(line)
        for line in run_main(capsys, "search", str(out), "-q", "test:0-99", "-k", "1", "--json").splitlines()
    ]
    assert any(r["prediction"] != "unknown" for r in found)
    assert all((r["prediction"] != "unknown") == (r["score"] >= threshold) for r in found)


def olivetti_folders(root: Path, data_home: str) -> None:
    """People 0-29 to train; 30-34 with images 0-4 to enrol and 5-9 to query; 35-39 strangers."""
    from PIL import Image
    from sklearn.datasets import fetch_olivetti_faces

    faces = fetch_olivetti_faces(data_home=data_home, download_if_missing=False)
    for i, (image, person) in enumerate(zip(faces.images, faces.target)):
        part = "train" if person < 30 else "stranger" if person >= 35 else "enrol" if i % 10 < 5 else "query"
        folder = root / part / f"person_{person:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR).save(folder / f"{i:03d}.png")


@pytest.mark.slow
def test_olivetti_rejects_strangers_more_than_enrolled_people(data_env, tmp_path, capsys):
    olivetti_folders(tmp_path, data_env["SCIKIT_LEARN_DATA"])
    out = tmp_path / "run"
    run_main(capsys, "train", "--data", str(tmp_path / "train"), "--image-size", "32", "--epochs", "30",
             "--embedding-dim", "32", "--verbose", "0", "--no-evaluate", "--out", str(out))  # fmt: skip
    printed = run_main(capsys, "index", "build", str(out), "--verbose", "0")  # the defaults
    assert "30 probes of the run's validation split" in printed and "1/30 = 0.033" in printed
    run_main(capsys, "index", "add", str(out), "--data", str(tmp_path / "enrol"), "--verbose", "0")
    enrolled = search(capsys, out, sorted((tmp_path / "query").glob("*/*.png")))
    strangers = search(capsys, out, sorted((tmp_path / "stranger").glob("*/*.png")))
    enrolled_rejected = np.mean([r["prediction"] == "unknown" for r in enrolled])
    strangers_rejected = np.mean([r["prediction"] == "unknown" for r in strangers])
    named_right = np.mean([r["prediction"] == r["query"].split("/")[-2] for r in enrolled])
    assert strangers_rejected > enrolled_rejected, (strangers_rejected, enrolled_rejected)
    assert strangers_rejected >= 0.5 and named_right >= 0.6, (strangers_rejected, named_right)
