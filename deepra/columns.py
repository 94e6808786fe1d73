"""The RA2-DREAM score columns and which detected crop (and which joint model) predicts each one.

`training.csv` of the RA2-DREAM challenge has `Patient_ID`, three patient totals and 86 joint scores
(Sharp/van der Heijde, SvH): 44 erosion columns (`_E_`) and 42 joint-space-narrowing columns
(`_J_`). Films are `<Patient_ID>-<LH|RH|LF|RF>.jpg` (left/right hand, left/right foot).

Ranges (SvH): hand erosion 0-5, foot erosion 0-10 (both sides of the joint, 0-5 each), narrowing
0-4. `Overall_erosion` is the sum of the 44 erosion columns, `Overall_narrowing` the sum of the 42
narrowing columns, `Overall_Tol` their sum.

Crop -> column mapping (stage 1 detects fingers, toes and wrists, not single joints; §3.1, §4.2).
`L` is the film's limb code. Hand detector classes: thumb, finger1-4 (index to little finger,
digits 2-5), wrist. Foot detector classes: toe (the big toe), finger1-4 (toes 2-5).

| film | crop | erosion columns (joint model, output) | narrowing columns (joint model, output) |
|---|---|---|---|
| LH/RH | thumb | `L_mcp_E__ip`, `L_mcp_E__1` (hand-erosion: distal, proximal) | `L_mcp_J__1` (foot-narrowing) |
| LH/RH | finger k | `L_pip_E__{k+1}`, `L_mcp_E__{k+1}` (hand-erosion) | `L_pip_J__{k+1}`, `L_mcp_J__{k+1}` (hand-narrowing) |
| LH/RH | wrist | `L_wrist_E__{mc1,mul,nav,lunate,radius,ulna}` (wrist, task erosion) | `L_wrist_J__{cmc3,cmc4,cmc5,mna,capnlun,radcar}` (wrist, task narrowing) |
| LF/RF | toe | `L_mtp_E__ip`, `L_mtp_E__1` (hand-erosion) | `L_mtp_J__ip`, `L_mtp_J__1` (hand-narrowing) |
| LF/RF | finger k | `L_mtp_E__{k+1}` (foot-erosion) | `L_mtp_J__{k+1}` (foot-narrowing) |

So a hand `finger2` crop predicts `pip_E__3`, `mcp_E__3`, `pip_J__3`, `mcp_J__3` of that hand.
The grouping is the paper's Table 2: the two-joint erosion model ("Hand Fingers & Thumb/Toe", B3,
2 outputs) sees hand fingers, thumbs and big toes: 4 x 734 + 734 + 734 = 4,404 crops for the 367
training patients; the two-joint narrowing model ("Hand Fingers & Toe", B3, 2) hand fingers and big
toes: 3,670; the one-joint narrowing model ("Feet Fingers & Thumb", B4, 1) toes 2-5 and thumbs (the
thumb has only one scored narrowing joint, its MCP): 3,670; the one-joint erosion model ("Feet
Fingers", B4, 1) toes 2-5: 2,936; the wrist models (B5, 6 outputs) one crop per hand: 734.
"distal" is the PIP joint of a finger, the IP joint of a thumb or big toe; "proximal" the MCP/MTP.

Reference:
    Chaturvedi, "DeepRA: predicting joint damage from radiographs using CNN with attention",
    §4.1, §4.3.1, Table 2; RA2-DREAM Challenge (Synapse syn20545111).
"""

from __future__ import annotations

LIMBS = ("LH", "RH", "LF", "RF")
HAND_LIMBS = ("LH", "RH")
FOOT_LIMBS = ("LF", "RF")

PATIENT_COLUMN = "Patient_ID"
OVERALL_COLUMNS = ("Overall_Tol", "Overall_erosion", "Overall_narrowing")

HAND_CLASSES = ("thumb", "finger1", "finger2", "finger3", "finger4", "wrist")
FOOT_CLASSES = ("toe", "finger1", "finger2", "finger3", "finger4")

WRIST_EROSION_JOINTS = ("mc1", "mul", "nav", "lunate", "radius", "ulna")
WRIST_NARROWING_JOINTS = ("cmc3", "cmc4", "cmc5", "mna", "capnlun", "radcar")

HAND_EROSION_MAX = 5
FOOT_EROSION_MAX = 10
NARROWING_MAX = 4


def _hand_erosion(limb):
    return (
        [f"{limb}_mcp_E__ip"]
        + [f"{limb}_pip_E__{d}" for d in range(2, 6)]
        + [f"{limb}_mcp_E__{d}" for d in range(1, 6)]
        + [f"{limb}_wrist_E__{j}" for j in WRIST_EROSION_JOINTS]
    )


def _hand_narrowing(limb):
    return (
        [f"{limb}_pip_J__{d}" for d in range(2, 6)]
        + [f"{limb}_mcp_J__{d}" for d in range(1, 6)]
        + [f"{limb}_wrist_J__{j}" for j in WRIST_NARROWING_JOINTS]
    )


def _foot_erosion(limb):
    return [f"{limb}_mtp_E__ip"] + [f"{limb}_mtp_E__{d}" for d in range(1, 6)]


def _foot_narrowing(limb):
    return [f"{limb}_mtp_J__ip"] + [f"{limb}_mtp_J__{d}" for d in range(1, 6)]


# The order of the challenge's training.csv (hands, then feet; erosion, then narrowing).
EROSION_COLUMNS = tuple(
    _hand_erosion("LH") + _hand_erosion("RH") + _foot_erosion("LF") + _foot_erosion("RF")
)
NARROWING_COLUMNS = tuple(
    _hand_narrowing("LH") + _hand_narrowing("RH") + _foot_narrowing("LF") + _foot_narrowing("RF")
)
JOINT_COLUMNS = EROSION_COLUMNS + NARROWING_COLUMNS
SCORE_COLUMNS = OVERALL_COLUMNS + JOINT_COLUMNS
TRAINING_COLUMNS = (PATIENT_COLUMN,) + SCORE_COLUMNS


def limb_of(column):
    """The limb code (`"LH"`, `"RH"`, `"LF"`, `"RF"`) of a joint column, e.g. `LH_mcp_E__ip` -> `LH`."""
    limb = column.split("_", 1)[0]
    if limb not in LIMBS or column not in JOINT_COLUMNS:
        raise ValueError(f"Unknown joint column '{column}'.")
    return limb


def is_erosion(column):
    """Whether a joint column is an erosion score (`_E_`), as opposed to narrowing (`_J_`)."""
    return column in EROSION_COLUMNS


def score_max(column):
    """The largest valid value of a score column: 5 (hand erosion), 10 (foot erosion), 4 (narrowing).

    The overall columns have the sums of the maxima of their joints as maximum.
    """
    if column == "Overall_erosion":
        return sum(score_max(c) for c in EROSION_COLUMNS)
    if column == "Overall_narrowing":
        return sum(score_max(c) for c in NARROWING_COLUMNS)
    if column == "Overall_Tol":
        return score_max("Overall_erosion") + score_max("Overall_narrowing")
    if column in NARROWING_COLUMNS:
        return NARROWING_MAX
    if column in EROSION_COLUMNS:
        return FOOT_EROSION_MAX if limb_of(column) in FOOT_LIMBS else HAND_EROSION_MAX
    raise ValueError(f"Unknown score column '{column}'.")


def detector_classes(limb):
    """The detector's class names for a film: hand classes for LH/RH, foot classes for LF/RF."""
    if limb in HAND_LIMBS:
        return HAND_CLASSES
    if limb in FOOT_LIMBS:
        return FOOT_CLASSES
    raise ValueError(f"Unknown limb '{limb}'. Available: {list(LIMBS)}")


# The six joint models of §4.3.1 ("We train 6 joint level models"): key -> (preset, task, head).
# `head` is "pair" (distal + proximal joint), "single" (one joint) or "wrist" (six joints).
JOINT_MODELS = {
    "hand-erosion": ("hand-erosion", "erosion", "pair"),
    "hand-narrowing": ("hand-narrowing", "narrowing", "pair"),
    "foot-narrowing": ("foot-narrowing", "narrowing", "single"),
    "foot-erosion": ("foot-erosion", "erosion", "single"),
    "wrist-erosion": ("wrist", "erosion", "wrist"),
    "wrist-narrowing": ("wrist", "narrowing", "wrist"),
}


def output_names(task, head):
    """The output names of a joint model: one per predicted joint of a crop.

    Args:
        task: "erosion" or "narrowing".
        head: "pair" -> (`distal_<task>`, `proximal_<task>`); "single" -> (`<task>`,);
            "wrist" -> (`<task>_<joint>` for the six wrist joints of that task).

    Returns:
        tuple of str.
    """
    if task not in ("erosion", "narrowing"):
        raise ValueError(f"Unknown task '{task}'. Available: ['erosion', 'narrowing']")
    if head == "pair":
        return (f"distal_{task}", f"proximal_{task}")
    if head == "single":
        return (task,)
    if head == "wrist":
        joints = WRIST_EROSION_JOINTS if task == "erosion" else WRIST_NARROWING_JOINTS
        return tuple(f"{task}_{j}" for j in joints)
    raise ValueError(f"Unknown head '{head}'. Available: ['pair', 'single', 'wrist']")


def crop_targets(limb, crop):
    """Which joint model predicts which columns from one detected crop.

    Args:
        limb: "LH", "RH", "LF" or "RF".
        crop: a detector class of that limb ("thumb", "finger1".."finger4", "wrist"; "toe", ...).

    Returns:
        dict {joint model key (see `JOINT_MODELS`): {output name: RA2 column}}; every crop feeds
        one erosion model and one narrowing model.
    """
    if crop not in detector_classes(limb):
        raise ValueError(
            f"Unknown crop '{crop}' for a {limb} film. Available: {list(detector_classes(limb))}"
        )
    if limb in HAND_LIMBS:
        if crop == "thumb":
            return {
                "hand-erosion": {
                    "distal_erosion": f"{limb}_mcp_E__ip",
                    "proximal_erosion": f"{limb}_mcp_E__1",
                },
                "foot-narrowing": {"narrowing": f"{limb}_mcp_J__1"},
            }
        if crop == "wrist":
            return {
                "wrist-erosion": {
                    f"erosion_{j}": f"{limb}_wrist_E__{j}" for j in WRIST_EROSION_JOINTS
                },
                "wrist-narrowing": {
                    f"narrowing_{j}": f"{limb}_wrist_J__{j}" for j in WRIST_NARROWING_JOINTS
                },
            }
        digit = int(crop[-1]) + 1
        return {
            "hand-erosion": {
                "distal_erosion": f"{limb}_pip_E__{digit}",
                "proximal_erosion": f"{limb}_mcp_E__{digit}",
            },
            "hand-narrowing": {
                "distal_narrowing": f"{limb}_pip_J__{digit}",
                "proximal_narrowing": f"{limb}_mcp_J__{digit}",
            },
        }
    if crop == "toe":
        return {
            "hand-erosion": {
                "distal_erosion": f"{limb}_mtp_E__ip",
                "proximal_erosion": f"{limb}_mtp_E__1",
            },
            "hand-narrowing": {
                "distal_narrowing": f"{limb}_mtp_J__ip",
                "proximal_narrowing": f"{limb}_mtp_J__1",
            },
        }
    toe = int(crop[-1]) + 1
    return {
        "foot-erosion": {"erosion": f"{limb}_mtp_E__{toe}"},
        "foot-narrowing": {"narrowing": f"{limb}_mtp_J__{toe}"},
    }


def column_sources():
    """Every joint column with the (limb, crop, joint model, output) that predicts it.

    Returns:
        dict {column: (limb, crop, model key, output name)}; exactly the 86 joint columns.
    """
    sources = {}
    for limb in LIMBS:
        for crop in detector_classes(limb):
            for model_key, outputs in crop_targets(limb, crop).items():
                for output, column in outputs.items():
                    if column in sources:
                        raise RuntimeError(f"{column} is predicted twice")  # a bug in this table
                    sources[column] = (limb, crop, model_key, output)
    return sources
