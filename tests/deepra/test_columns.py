"""The RA2-DREAM columns and the crop -> column -> joint-model mapping (paper §4.1, Table 2)."""

import pytest

from deepra import columns
from deepra.joints import TABLE2
from deepra.joints import joint_config
from deepra.joints import joint_model_config

# §4.1: 1,468 radiographs of 367 patients in the training data.
PAPER_PATIENTS = 367


def test_column_counts_and_order():
    assert len(columns.EROSION_COLUMNS) == 44
    assert len(columns.NARROWING_COLUMNS) == 42
    assert len(columns.JOINT_COLUMNS) == 86 == len(set(columns.JOINT_COLUMNS))
    assert columns.TRAINING_COLUMNS[:4] == (
        "Patient_ID",
        "Overall_Tol",
        "Overall_erosion",
        "Overall_narrowing",
    )
    assert columns.EROSION_COLUMNS[0] == "LH_mcp_E__ip"
    assert columns.NARROWING_COLUMNS[-1] == "RF_mtp_J__5"


@pytest.mark.parametrize(
    "column, top",
    [
        ("LH_mcp_E__ip", 5),
        ("RH_wrist_E__ulna", 5),
        ("LF_mtp_E__ip", 10),
        ("RF_mtp_E__5", 10),
        ("LH_wrist_J__radcar", 4),
        ("RF_mtp_J__ip", 4),
        ("Overall_erosion", 32 * 5 + 12 * 10),
        ("Overall_narrowing", 42 * 4),
        ("Overall_Tol", 280 + 168),
    ],
)
def test_score_ranges(column, top):
    assert columns.score_max(column) == top


def test_every_joint_column_is_predicted_once():
    sources = columns.column_sources()
    assert sorted(sources) == sorted(columns.JOINT_COLUMNS)


@pytest.mark.parametrize(
    "limb, crop, expected",
    [
        (
            "LH",
            "finger2",
            {
                "hand-erosion": {
                    "distal_erosion": "LH_pip_E__3",
                    "proximal_erosion": "LH_mcp_E__3",
                },
                "hand-narrowing": {
                    "distal_narrowing": "LH_pip_J__3",
                    "proximal_narrowing": "LH_mcp_J__3",
                },
            },
        ),
        (
            "RH",
            "thumb",
            {
                "hand-erosion": {
                    "distal_erosion": "RH_mcp_E__ip",
                    "proximal_erosion": "RH_mcp_E__1",
                },
                "foot-narrowing": {"narrowing": "RH_mcp_J__1"},
            },
        ),
        (
            "LF",
            "toe",
            {
                "hand-erosion": {
                    "distal_erosion": "LF_mtp_E__ip",
                    "proximal_erosion": "LF_mtp_E__1",
                },
                "hand-narrowing": {
                    "distal_narrowing": "LF_mtp_J__ip",
                    "proximal_narrowing": "LF_mtp_J__1",
                },
            },
        ),
        (
            "RF",
            "finger4",
            {
                "foot-erosion": {"erosion": "RF_mtp_E__5"},
                "foot-narrowing": {"narrowing": "RF_mtp_J__5"},
            },
        ),
    ],
)
def test_crop_targets(limb, crop, expected):
    assert columns.crop_targets(limb, crop) == expected


def test_wrist_crop_feeds_both_wrist_models():
    targets = columns.crop_targets("LH", "wrist")
    assert list(targets["wrist-erosion"].values()) == [
        f"LH_wrist_E__{j}" for j in ("mc1", "mul", "nav", "lunate", "radius", "ulna")
    ]
    assert list(targets["wrist-narrowing"].values()) == [
        f"LH_wrist_J__{j}" for j in ("cmc3", "cmc4", "cmc5", "mna", "capnlun", "radcar")
    ]


@pytest.mark.parametrize("preset", sorted(TABLE2))
def test_table2_joint_image_counts_follow_from_the_mapping(preset):
    # Table 2, "Total Joint Images": crops per model for the 367 training patients (§4.1).
    keys = [k for k, (p, _, _) in columns.JOINT_MODELS.items() if p == preset]
    per_patient = 0
    for limb in columns.LIMBS:
        for crop in columns.detector_classes(limb):
            if keys[0] in columns.crop_targets(limb, crop):
                per_patient += 1
    assert per_patient * PAPER_PATIENTS == TABLE2[preset]["total_joint_images"]
    for key in keys:  # Table 2, "Number of Predictions"
        assert len(joint_model_config(key)["output_names"]) == TABLE2[preset]["predictions"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (("LH", "toe"), "Unknown crop 'toe'"),
        (("XX", "thumb"), "Unknown limb 'XX'"),
    ],
)
def test_crop_targets_rejects_unknown(bad, message):
    with pytest.raises(ValueError, match=message):
        columns.crop_targets(*bad)


def test_unknown_task_and_head():
    with pytest.raises(ValueError, match="Unknown task 'pain'"):
        columns.output_names("pain", "pair")
    with pytest.raises(ValueError, match="Unknown head 'triple'"):
        joint_config("demo", head="triple")
