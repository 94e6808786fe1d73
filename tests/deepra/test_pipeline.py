"""Pipeline pieces without training: metrics of §4.3.2, the baseline, detector AP, boxes, config."""

import numpy as np
import pandas as pd
import pytest

from deepra import columns
from deepra import pipeline
from deepra.detector import _fuse_boxes
from deepra.detector import box_iou
from deepra.evaluate import baseline_table
from deepra.evaluate import crop_mapping_rows
from deepra.evaluate import detector_metrics
from deepra.evaluate import score_metrics
from deepra.train import TRAIN_PRESETS
from deepra.train import train_config


def _table(rows):
    frame = pd.DataFrame(rows)
    for column in columns.SCORE_COLUMNS:
        if column not in frame:
            frame[column] = 0.0
    return frame[list(columns.TRAINING_COLUMNS)]


def test_score_metrics_follow_the_papers_formulas():
    # §4.3.2: sqrt((1/n) sum w (y - x)^2) over (patient, joint) pairs; (1/n) sum w |y - x|
    truth = _table([{"Patient_ID": "a", "LH_pip_J__2": 2.0, "Overall_Tol": 10.0}] * 2)
    predicted = truth.copy()
    predicted.loc[0, "LH_pip_J__2"] = 0.0  # one narrowing error of 2
    predicted.loc[1, "LF_mtp_E__3"] = 3.0  # one erosion error of 3
    predicted["Overall_Tol"] = [13.0, 6.0]  # errors 3 and 4
    weights = {"LH_pip_J__2": 4.0}
    values, ci = score_metrics(truth, predicted, weights=weights, n_boot=50, seed=0)
    n_narrowing = 2 * len(columns.NARROWING_COLUMNS)
    n_erosion = 2 * len(columns.EROSION_COLUMNS)
    assert values["weighted_rmse_narrowing"] == pytest.approx(np.sqrt(4.0 * 4 / n_narrowing))
    assert values["weighted_rmse_erosion"] == pytest.approx(np.sqrt(9.0 / n_erosion))
    assert values["weighted_mae_overall"] == pytest.approx(3.5)
    assert set(ci) == set(values)
    assert ci["weighted_mae_overall"][0] <= 3.5 <= ci["weighted_mae_overall"][1]


def test_baseline_draws_from_the_training_distribution():
    rng = np.random.default_rng(0)
    train = _table(
        [
            {"Patient_ID": f"t{i}", "LH_mcp_E__ip": float(v), "Overall_Tol": float(10 * v)}
            for i, v in enumerate(rng.choice([0, 0, 0, 2, 5], size=40))
        ]
    )
    first = baseline_table(train, ["x", "y", "z"] * 20, seed=3)
    again = baseline_table(train, ["x", "y", "z"] * 20, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == list(columns.TRAINING_COLUMNS)
    assert set(first["LH_mcp_E__ip"]) <= {0.0, 2.0, 5.0} and first["LH_mcp_E__ip"].nunique() > 1
    assert set(first["Overall_Tol"]) <= {0.0, 20.0, 50.0}
    assert (first["RF_mtp_J__5"] == 0).all()  # a column that is always 0 in training


def test_detector_metrics_table1_ap_and_interval():
    truth = pd.DataFrame(
        [(f"f{i}", "thumb", 0, 0, 10, 40) for i in range(6)]
        + [(f"f{i}", "wrist", 0, 50, 40, 90) for i in range(6)],
        columns=["image", "label", "xmin", "ymin", "xmax", "ymax"],
    )
    perfect = truth.assign(score=0.9)
    ap, (low, high) = detector_metrics(perfect, truth, ["thumb", "wrist"], n_boot=100)
    assert ap["mAP"] == 1.0 and (low, high) == (1.0, 1.0)
    # wrists shifted by 5 px: IoU 0.6 for a 40 x 40 box shifted by 5 px is 0.78 (a hit); by 15 px
    # 0.45 (a miss at Table 1's threshold)
    for shift, expected in ((5, 1.0), (15, 0.5)):
        found = perfect.copy()
        found.loc[found["label"] == "wrist", ["ymin", "ymax"]] += shift
        ap, _ = detector_metrics(found, truth, ["thumb", "wrist"], n_boot=20)
        assert ap["mAP"] == pytest.approx(expected)


def test_box_fusion_averages_the_overlapping_anchor_boxes():
    boxes = np.array([[[0, 0, 10, 40], [2, 0, 12, 40], [50, 50, 60, 60], [1, 0, 11, 40]]], float)
    scores = np.array([[[0.9], [0.9], [0.8], [0.1]]])  # the last is too weak to join
    fused = _fuse_boxes(
        boxes[:, :1], np.array([[0.9]]), np.array([[0]]), np.array([1]), boxes, scores
    )
    np.testing.assert_allclose(fused[0, 0], [1, 0, 11, 40])


def test_grow_boxes_and_mirroring():
    boxes = pd.DataFrame(
        {"image": ["a"], "xmin": [10.0], "ymin": [20.0], "xmax": [30.0], "ymax": [60.0]}
    )
    grown = pipeline.grow_boxes(boxes, 0.1)
    assert grown[["xmin", "ymin", "xmax", "ymax"]].iloc[0].tolist() == [8.0, 16.0, 32.0, 64.0]
    mirrored = pipeline.mirror_boxes(boxes, {"a": 100})
    assert mirrored[["xmin", "xmax"]].iloc[0].tolist() == [69.0, 89.0]
    twice = pipeline.mirror_boxes(mirrored, {"a": 100})
    assert (
        box_iou(twice[["xmin", "ymin", "xmax", "ymax"]], boxes[["xmin", "ymin", "xmax", "ymax"]])[
            0, 0
        ]
        == 1.0
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "papr"}, "Unknown preset 'papr'. Available: \\['demo', 'paper'\\]"),
        ({"joint_models": ["hand-erosion"]}, "must include all six"),
        ({"joint_models": "hand-erosion,toes"}, "Unknown joint model 'toes'"),
        ({"crop_source": "manual"}, "Unknown crop_source 'manual'"),
        ({"joint_epochs": 0}, "joint_epochs must be a positive integer"),
        ({"colour": 1}, "Unknown override 'colour'"),
    ],
)
def test_train_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_config(**kwargs)


def test_paper_training_preset():
    # §4.2.1 and §4.3.1
    paper = train_config("paper")
    assert paper["detectors"] == {"hand": "paper-hand", "foot": "paper-foot"}
    assert (paper["detector_batch_size"], paper["joint_batch_size"]) == (8, 32)
    assert (paper["detector_epochs"], paper["joint_epochs"]) == (50, 200)
    assert paper["test_fraction"] == 0.2 and paper["crop_source"] == "detected"
    assert sorted(paper["joint_models"]) == sorted(columns.JOINT_MODELS)
    assert set(TRAIN_PRESETS) == {"demo", "paper"}


def test_every_column_has_one_model_of_the_run():
    sources = columns.column_sources()
    assert sorted(sources) == sorted(columns.JOINT_COLUMNS)
    assert {model for _, _, model, _ in sources.values()} == set(columns.JOINT_MODELS)
    assert set(pipeline.MODEL_NAMES) == set(columns.JOINT_MODELS) | {
        "detector-hand",
        "detector-foot",
    }


def test_crop_mapping_rows_cover_every_column_once():
    rows = crop_mapping_rows(columns.LIMBS)
    named = [
        pair.split(": ")[1] for row in rows for pair in row["columns (output: column)"].split(", ")
    ]
    assert sorted(named) == sorted(columns.JOINT_COLUMNS)
    assert len(rows) == 2 * (6 * 2) + 2 * (5 * 2)  # every crop feeds one erosion, one narrowing
