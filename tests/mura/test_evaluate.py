"""Study-level metrics, the top-k checkpoint keeper, and predict's studies, without training."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import roc_auc_score

import mura
from common import phantoms as ph
from common.errors import DataError
from mura.ensemble import TopKWeights
from mura.ensemble import member_weight_files
from mura.ensemble import read_index
from mura.evaluate import study_metrics

TINY = {"input_shape": (48, 48, 3), "blocks": (1, 1), "growth_rate": 4, "stem_filters": 8}


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return mura.build_model("demo", **TINY)


# --------------------------------------------------------------------------- metrics


def _study_table(seed=0, n=120):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.clip(0.35 * labels + rng.uniform(0, 0.65, n), 0, 1)
    patients = np.array([f"patient{i // 2:05d}" for i in range(n)])  # two studies per patient
    parts = np.array(["wrist", "hand", "elbow"])[rng.integers(0, 3, n)]
    return labels, probs, patients, parts


@pytest.mark.parametrize("seed", [0, 1])
def test_study_metrics_match_scikit_learn(seed):
    labels, probs, patients, parts = _study_table(seed)
    values, ci = study_metrics(labels, probs, patients, parts, seed=0, n_boot=200)
    pred = (probs >= 0.5).astype(int)
    assert values["study_kappa"] == pytest.approx(cohen_kappa_score(labels, pred))
    assert values["study_auroc"] == pytest.approx(roc_auc_score(labels, probs))
    assert values["study_sensitivity"] == pytest.approx(pred[labels == 1].mean())
    assert values["study_specificity"] == pytest.approx(1 - pred[labels == 0].mean())
    for key in ("study_kappa", "study_auroc", "study_sensitivity", "study_specificity"):
        low, high = ci[key]
        assert low <= values[key] <= high, key
    assert set(values["by_body_part"]) == {"wrist", "hand", "elbow"}
    for part, entry in values["by_body_part"].items():
        member = parts == part
        assert set(entry) == {"kappa", "auroc", "studies"}
        assert entry["studies"] == member.sum()
        assert entry["kappa"] == pytest.approx(cohen_kappa_score(labels[member], pred[member]))
        assert entry["auroc"] == pytest.approx(roc_auc_score(labels[member], probs[member]))
        assert set(ci["by_body_part"][part]) == {"kappa", "auroc"}


def test_study_metrics_single_class_part_is_undefined_not_an_error():
    labels = np.array([1, 0, 1, 0, 1, 1])
    probs = np.array([0.9, 0.2, 0.7, 0.4, 0.8, 0.6])
    parts = np.array(["wrist", "wrist", "hand", "hand", "finger", "finger"])
    values, _ = study_metrics(labels, probs, np.arange(6), parts, n_boot=50)
    assert np.isnan(values["by_body_part"]["finger"]["auroc"])
    assert values["by_body_part"]["finger"]["studies"] == 2
    assert values["study_auroc"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- top-k checkpoints


def _run_epochs(callback, model, losses, start=0):
    for epoch, loss in enumerate(losses, start=start):
        callback.on_epoch_begin(epoch)
        model.get_layer("abnormal").bias.assign([float(epoch)])  # marks the weights of each epoch
        callback.on_epoch_end(epoch, {"val_loss": loss})


def test_topk_keeps_the_k_best_epochs(tiny_model, tmp_path):
    callback = TopKWeights(tmp_path / "topk", k=3)
    callback.set_model(tiny_model)
    callback.on_train_begin()
    losses = [0.9, 0.5, 0.7, 0.4, 0.8, float("nan"), 0.45]
    _run_epochs(callback, tiny_model, losses)
    entries = read_index(tmp_path / "topk")
    assert [e["epoch"] for e in entries] == [3, 6, 1]  # the three lowest losses, best first
    assert sorted(p.name for p in (tmp_path / "topk").glob("*.weights.h5")) == [
        "epoch-0001.weights.h5",
        "epoch-0003.weights.h5",
        "epoch-0006.weights.h5",
    ]
    # Each file holds the weights of its own epoch.
    clone = keras.models.clone_model(tiny_model)
    for entry in entries:
        clone.load_weights(tmp_path / "topk" / entry["file"])
        assert float(clone.get_layer("abnormal").bias.numpy()[0]) == entry["epoch"]
    model_file = tmp_path / "model.keras"
    (tmp_path / "checkpoints").mkdir()
    os.replace(tmp_path / "topk", tmp_path / "checkpoints" / "topk")
    assert [p.name for p in member_weight_files(model_file, 2)] == [
        "epoch-0003.weights.h5",
        "epoch-0006.weights.h5",
    ]
    with pytest.raises(DataError, match="an ensemble of 4 needs .* only 3 found"):
        member_weight_files(model_file, 4)


def test_topk_resume_drops_the_interrupted_attempts_epochs(tiny_model, tmp_path):
    folder = tmp_path / "topk"
    first = TopKWeights(folder, k=2)
    first.set_model(tiny_model)
    first.on_train_begin()
    _run_epochs(first, tiny_model, [0.9, 0.3, 0.2])  # killed after epoch 2, checkpointed epoch 1
    resumed = TopKWeights(folder, k=2)
    resumed.set_model(tiny_model)
    resumed.on_train_begin()
    assert [e["epoch"] for e in resumed.entries] == [2, 1]
    _run_epochs(resumed, tiny_model, [0.6, 0.1], start=2)  # epoch 2 again, then epoch 3
    entries = read_index(folder)
    assert [(e["epoch"], e["value"]) for e in entries] == [(3, 0.1), (1, 0.3)]
    assert not (folder / "epoch-0002.weights.h5").exists()
    assert json.loads((folder / "index.json").read_text()) == entries


# --------------------------------------------------------------------------- predict


def _write_png(path, seed):
    img = ph.blank((70, 60), 0.1)
    ph.draw_capsule(img, (30, 5), (30, 65), 6 + seed, value=0.7)
    ph.write_png(path, img)


@pytest.fixture
def inputs(tmp_path):
    """A MURA-like study folder (3 views), two loose files in one folder, one alone, two DICOMs."""
    study = tmp_path / "XR_WRIST" / "patient00001" / "study1_positive"
    for j in range(1, 4):
        _write_png(study / f"image{j}.png", j)
    (study / "._image1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    for name in ("a.png", "b.png"):
        _write_png(tmp_path / "loose" / name, 4)
    _write_png(tmp_path / "alone" / "c.png", 5)
    for k in range(2):
        ph.write_dicom(tmp_path / "dicom" / f"film{k}.dcm", ph.blank((64, 64), 0.3 + 0.2 * k))
    return tmp_path


def test_predict_one_row_per_study(tiny_model, inputs, tmp_path):
    out = tmp_path / "out"
    frame = mura.predict(
        tiny_model,
        [
            inputs / "XR_WRIST",
            inputs / "loose" / "a.png",
            inputs / "loose" / "b.png",
            inputs / "alone" / "c.png",
            inputs / "dicom",
        ],
        out,
        explain=True,
        verbose=0,
    )
    written = pd.read_csv(out / "predictions.csv")
    assert list(written["study"]) == list(frame["study"])
    assert list(written["num_images"]) == [3, 2, 1, 1, 1]
    assert written.loc[0, "body_part"] == "wrist"
    assert written.loc[0, "images"] == "image1.png;image2.png;image3.png"
    assert written["study"].iloc[1].endswith("loose/")
    # DICOM files of one folder with different StudyInstanceUIDs are two studies, named by a
    # salted hash of their UIDs, never by their folder (common.identifiers).
    assert written["study"].iloc[3].startswith("grp-")
    assert written["study"].iloc[4].startswith("grp-")
    assert written["study"].iloc[3] != written["study"].iloc[4]
    assert "dicom" not in written["study"].iloc[3] + written["study"].iloc[4]
    images = pd.read_csv(out / "image_predictions.csv")
    assert len(images) == 8
    means = images.groupby("study", sort=False)["probability"].mean()
    np.testing.assert_allclose(written["probability"], means.loc[written["study"]], atol=2e-6)
    assert ((written["probability"] >= 0.5) == (written["prediction"] == 1)).all()
    for name in images["overlay"]:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert len(set(images["overlay"])) == 8
    text = (out / "predictions.csv").read_text() + (out / "image_predictions.csv").read_text()
    assert "PHANTOM" not in text  # the DICOM PatientID / PatientName never reach the outputs


@pytest.mark.parametrize(
    "make_bad, fragment",
    [
        (lambda d: (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "broken.png"),
        (lambda d: (d / "empty.png").write_bytes(b""), "empty.png"),
        (lambda d: (d / "notes.txt").write_text("x"), "notes.txt"),
    ],
)
def test_predict_bad_input_names_the_file_and_writes_nothing(
    tiny_model, tmp_path, make_bad, fragment
):
    make_bad(tmp_path)
    _write_png(tmp_path / "good.png", 1)
    with pytest.raises(DataError, match=fragment):
        mura.predict(tiny_model, [tmp_path / "good.png", tmp_path / fragment], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_predict_ensemble_needs_the_model_file(tiny_model, inputs, tmp_path):
    with pytest.raises(ValueError, match="ensemble needs the model file"):
        mura.predict(tiny_model, [inputs / "alone"], tmp_path / "out", ensemble=2)
