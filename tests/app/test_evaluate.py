"""`clusterloss evaluate`, `index build`, `search`, the evaluation at the end of `train`, the
HTML report (in a headless browser where one is installed) and the Olivetti open-set run."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from clusterloss.app.cli.main import build_parser, main
from clusterloss.app.config import TrainConfig
from clusterloss.app.evaluate import evaluate_run
from clusterloss.app.report.html import write_report
from clusterloss.app.results import load_run
from clusterloss.app.runs import train
from clusterloss.data import load_dataset
from clusterloss.evaluation import far_key

PNG = b"\x89PNG\r\n\x1a\n"
UNIT = (
    "precision_at_1", "r_precision", "map_at_r", "mean_average_precision",
    "mean_reciprocal_rank", "recall_at_1", "recall_at_8", "nmi", "ami", "roc_auc", "eer",
    "tar_at_far_1e-1", "tar_at_far_1e-2", "tar_at_far_1e-3",
)  # fmt: skip
UNSEEN = tuple(f"unseen_{k}" for k in UNIT[:9])
OPEN_SET = (
    "open_set_auroc",
    "open_set_known_accept_rate",
    "open_set_unknown_reject_rate",
    "open_set_known_accuracy",
    "open_set_accuracy",
)


def check_unit(metrics, keys):
    for key in keys:
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))


def run_main(capsys, *args) -> str:
    """The CLI in this process (`clusterloss.app.cli.main.main`): the same parser and
    commands as the subprocess, without starting Keras again."""
    assert main(list(args)) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits run on classes 0-6 (7-9 unseen), trained and evaluated by the CLI."""
    out = tmp_path_factory.mktemp("eval") / "run"
    with pytest.MonkeyPatch.context() as patch:
        printed = []
        patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        assert main(["train", "--loss", "softmax", "--epochs", "2", "--known-classes", "0-6",
                     "--embedding-dim", "8", "--verbose", "0", "--out", str(out)]) == 0  # fmt: skip
    return out, "\n".join(printed)


def test_train_evaluates_digits_with_unseen_classes(digits_run):
    out, printed = digits_run
    assert '"open_set_auroc"' in printed  # the summary printed by train
    for name in ("roc.png", "neighbors.png", "neighbors_unseen.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "cosine" and metrics["verification_set"] == "unseen"
    check_unit(metrics, UNIT + UNSEEN + OPEN_SET + tuple("known_" + k for k in UNIT[9:]))
    assert metrics["num_classes"] == 7 and metrics["num_unknown_classes"] == 3
    assert metrics["num_unknown"] == 134  # the test images of digits 7, 8 and 9
    assert metrics["num_genuine_pairs"] + metrics["num_impostor_pairs"] == 134 * 133 // 2
    assert metrics["precision_at_1"] > 0.3  # 2 epochs on 7 classes: far above chance
    assert metrics["evaluate_seconds"] > 0 and len(metrics["history"]["loss"]) == 2


def test_report_names_what_was_trained(digits_run):
    """The title and the settings name the trunk, its weights and the image size, and show
    the value a default resolved to, not n/a."""
    out, _ = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resolved"] == {"backbone": "mlp", "weights": "none", "image_size": "8x8",
                                   "val_split": 0.0, "test_split": "the set's own", "learning_rate": 0.01}  # fmt: skip
    text = (out / "report.html").read_text()
    assert "<h1>clusterloss run: digits / softmax / 8-D / mlp, random init / 8x8 / seed 0</h1>" in text
    settings = text[text.index("<h2>Settings</h2>") :]
    for key, shown in (
        ("backbone", "mlp (auto)"),
        ("weights", "none (default)"),
        ("image_size", "8x8 (default)"),
        ("val_split", "0.0000 (default)"),
        ("test_split", "the set&#x27;s own (default)"),
    ):
        assert f"<tr><th>{key}</th><td>{shown}</td></tr>" in settings, key
    assert '<tr><th>learning_rate</th><td class="num">0.0100</td></tr>' in settings


def test_history_plot_marks_the_frozen_epochs_and_the_kept_one(monkeypatch, tmp_path):
    from clusterloss.app.report import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))
    history = {"loss": [3.0, 2.0, 1.5, 1.4], "accuracy": [0.2, 0.4, 0.6, 0.7], "val_map_at_r": [0.2, 0.5, 0.7, 0.6]}
    metrics = {"config": {"freeze_backbone_epochs": 2}, "best_epoch": 3, "history": history}
    plots.plot_history(history, tmp_path / "history.png", "title", **plots.history_marks(metrics))
    for ax in drawn[0].axes:
        (span,) = ax.patches  # epochs 1-2 shaded: x from 0.5 to 2.5
        assert (span.get_x(), span.get_width()) == (0.5, 2.0)
        assert span.get_label() == "trunk frozen (epochs 1-2)"
        kept = [line for line in ax.lines if line.get_label() == "kept: epoch 3"]
        assert len(kept) == 1 and list(kept[0].get_xdata()) == [3, 3]
    stars = [line for line in drawn[0].axes[1].lines if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([3], [0.7])]
    drawn.clear()
    plots.plot_history(history, tmp_path / "history.png", **plots.history_marks({"history": history}))
    assert not drawn[0].axes[0].patches and not any(line.get_marker() == "*" for line in drawn[0].axes[1].lines)


def test_evaluate_index_build_and_search_cli(digits_run, capsys):
    out, _ = digits_run
    before = json.loads((out / "metrics.json").read_text())
    (out / "roc.png").unlink()
    marker = {**before, "kept_by_evaluate": 1}
    (out / "metrics.json").write_text(json.dumps(marker))
    printed = run_main(capsys, "evaluate", str(out), "--verbose", "0")
    assert '"roc_auc"' in printed and (out / "roc.png").is_file()
    after = json.loads((out / "metrics.json").read_text())
    assert after["kept_by_evaluate"] == 1  # merged into, not replaced
    # recomputed from the saved model: the same embeddings, so the same numbers
    for key in ("roc_auc", "open_set_auroc", "unseen_map_at_r", "map_at_r"):
        assert after[key] == pytest.approx(before[key], abs=1e-4), key

    printed = run_main(capsys, "index", "build", str(out), "--verbose", "0")
    assert "948 items of 7 classes, 8-D, cosine, flat (exact" in printed
    assert "316 probes of the run's test split" in printed and "<- chosen" in printed
    saved = json.loads((out / "index" / "calibration.json").read_text())["calibration"]
    assert saved["target"] == {"far": 0.01} and saved["num_strangers"] == saved["num_mated"] == 316
    assert saved["far"] <= 0.01 and -1 <= saved["threshold"] <= 1

    printed = run_main(capsys, "search", str(out), "--query", "test:0,5", "-q", "unknown:2", "-k", "4", "--json")
    found = [json.loads(line) for line in printed.splitlines()]  # one JSON object per line
    assert [q["query"] for q in found] == ["test[0]", "test[5]", "unknown[2]"]
    for query in found:
        scores = [n["score"] for n in query["neighbors"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        assert query["score"] == scores[0] and query["threshold"] == saved["threshold"]
        assert all(n["match"] == (n["class"] == query["class"]) for n in query["neighbors"])
        assert all(1 <= n["id"] <= 948 for n in query["neighbors"])
        known = scores[0] >= query["threshold"]
        assert query["prediction"] == (query["neighbors"][0]["class"] if known else "unknown")
    assert found[2]["class"] in ("7", "8", "9")  # unseen classes keep their names
    assert not any(n["match"] for n in found[2]["neighbors"])


def test_search_among_unseen_and_argument_errors(digits_run, capsys):
    out, _ = digits_run
    printed = run_main(
        capsys, "search", str(out), "-q", "unknown:0", "--gallery", "unknown", "-k", "3", "--verbose", "0"
    )
    assert re.search(r"^unknown\[0\]  class [789] ", printed, flags=re.M) and "no open-set threshold" in printed
    rows = re.findall(r"^\s+\d+\s+\S+\s+[-\d.]+\s+#(\d+)", printed, flags=re.M)
    assert len(rows) == 3 and "1" not in rows  # a query (id = position + 1) is never its own neighbour
    with pytest.raises(SystemExit):
        main(["search", str(out), "-q", "test:1,500"])
    assert "test has 316 samples (0-315); got indices [500]" in capsys.readouterr().err
    parser = build_parser()
    assert parser.parse_args(["train", "--no-evaluate"]).evaluate is False
    assert parser.parse_args(["train"]).evaluate is True


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_is_self_contained_and_renders_in_a_browser(digits_run, tmp_path):
    out, _ = digits_run
    text = (out / "report.html").read_text()
    assert not re.search(r"(?:src|href)=\"(?!data:)", text)  # nothing loaded from elsewhere
    assert "http://" not in text and "https://" not in text
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)
    assert images == ["history.png", "features.png", "roc.png", "neighbors.png", "neighbors_unseen.png"]
    assert ">open_set_auroc<" in text and ">unseen_map_at_r<" in text and "Settings" in text

    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (chromium / google-chrome) installed")
    # A copy that writes, once loaded, each image's decoded width into the DOM.
    probe = tmp_path / "probe.html"
    probe.write_text(
        text.replace(
            "</body>",
            "<script>addEventListener('load', () => { document.body.dataset.widths = "
            "[...document.images].map(i => i.complete ? i.naturalWidth : -1).join(','); });"
            "</script></body>",
        )
    )
    flags = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
    ]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "net::ERR" not in dom.stderr and "Uncaught" not in dom.stderr
    widths = re.search(r'data-widths="([^"]*)"', dom.stdout)
    assert widths, dom.stdout[:500]
    assert all(int(w) > 100 for w in widths.group(1).split(",")), widths.group(1)
    assert len(widths.group(1).split(",")) == 5

    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", (out / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and plots, not blank


def test_evaluate_run_without_unseen_classes(digits_run, tmp_path):
    """Every class known (the 0-6 model embeds all ten digits): verification on the test
    set, no unseen or open-set keys; a fresh directory gets metrics.json and the plots."""
    model, _, metrics = load_run(digits_run[0])
    data = load_dataset("digits", train_limit=400, test_limit=200)
    out = tmp_path / "all-known"
    out.mkdir()
    found = evaluate_run(out, model, data, {**metrics, "config": {}}, report=False)
    assert found["verification_set"] == "test" and found["metric"] == "cosine"
    check_unit(found, UNIT)
    assert not any(k.startswith(("unseen_", "open_set_", "known_")) for k in found)
    assert found["num_genuine_pairs"] + found["num_impostor_pairs"] == 200 * 199 // 2
    for name in ("roc.png", "neighbors.png", "features.png", "embeddings.npz"):
        assert (out / name).is_file(), name
    assert not (out / "report.html").exists() and not (out / "neighbors_unseen.png").exists()
    assert json.loads((out / "metrics.json").read_text())["roc_auc"] == found["roc_auc"]
    text = (write_report(out)).read_text()
    assert text.count('src="data:image/png;base64,') == 4  # history, features, roc, neighbours


def test_olivetti_open_set_protocol(data_env, monkeypatch, tmp_path):
    """Train on people 0-29; verification and open-set rejection on the 10 never seen.
    Trained with evaluate=False (train() then writes no evaluation), evaluated after."""
    monkeypatch.setenv("SCIKIT_LEARN_DATA", data_env["SCIKIT_LEARN_DATA"])
    out = tmp_path / "faces"
    config = TrainConfig(data="olivetti", loss="softmax", backbone="mlp", embedding_dim=16,
                         epochs=1, out=str(out), verbose=0, evaluate=False)  # fmt: skip
    assert "roc_auc" not in train(config) and not (out / "roc.png").exists()
    metrics = evaluate_run(out)
    assert metrics["verification_set"] == "unseen"
    assert metrics["num_classes"] == 30 and metrics["num_unknown_classes"] == 10
    assert metrics["num_unknown"] == 100  # all ten images of each unseen person
    assert metrics["num_genuine_pairs"] == 10 * 45 and metrics["num_impostor_pairs"] == 4500
    check_unit(metrics, UNIT + UNSEEN + OPEN_SET)  # 4,500 impostors: TAR@FAR=1e-3 exists
    assert metrics["known_num_genuine_pairs"] == 30 * 3  # 3 test images per known person
    assert 'alt="neighbors_unseen.png"' in (out / "report.html").read_text()


def test_far_keys_and_shared_label_checks():
    assert [far_key(f) for f in (0.1, 0.01, 0.001, 0.05)] == ["1e-1", "1e-2", "1e-3", "5e-2"]
    from clusterloss._validation import as_labels, check_labels

    for check in (as_labels, check_labels):  # one rule, one message, NumPy or tensor side
        with pytest.raises(ValueError, match=r"`labels` must be integer class ids; got float values such as 1\.5\."):
            check(np.array([0.0, 1.5]))
        with pytest.raises(ValueError, match=r"got float values such as inf\."):
            check(np.array([0.0, np.inf]))
        with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\)|shape \(batch,\) or \(batch, 1\)"):
            check(np.zeros((3, 2)))
    assert as_labels([True, False]).tolist() == [1, 0]  # bool passes on the NumPy side only
    with pytest.raises(ValueError, match="got dtype bool"):
        check_labels(np.array([True, False]))
    with pytest.raises(argparse.ArgumentTypeError):
        from clusterloss.app.cli.search import parse_query

        parse_query("test")
