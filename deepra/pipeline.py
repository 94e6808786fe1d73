"""DeepRA end to end: films -> finger/toe/wrist detection -> crops -> joint models -> 86 scores.

Stage 1 runs the hand detector on LH/RH films and the foot detector on LF/RF films. Films of
the right limb are mirrored before detection and the boxes mirrored back (`mirror_right_limbs`,
on in every preset): the detectors then only ever see the left-limb orientation (thumb or big
toe on the right), so "finger1" is always the same side of the thumb. The detections are decoded
with NMS per class (`deepra.detector.decode_per_class`), and the most confident box of every
class is the crop of that finger, toe or wrist (one crop per class and film, as the paper's
pipeline). A class the detector does not find on a film (no box above the confidence threshold)
gets the run's prior box of that class: the mean box of the training annotations of that limb,
relative to the film size (`box_priors`, stored in the run's `config.json`), and `source`
"prior" in `detections.csv`, so every one of the 86 columns always gets a prediction.

Stage 2 cuts each box out of its film (`deepra.data.extract_crops`), resizes it to the joint
model's input and predicts the joints that `deepra.columns.crop_targets` assigns to that crop and
model; `deepra.data.scores_table` collects the joint scores into one row per patient in the
challenge's `template.csv` layout (clipped into each score's range) and sums them into
`Overall_erosion`, `Overall_narrowing` and `Overall_Tol`.

A run folder (`deepra.train.train`) holds the nine model files of one pipeline:

    RUN/model.h5, RUN/model.keras          the hand-erosion joint model (= preset "paper", Table 2 row 1)
    RUN/models/<name>.h5, <name>.keras     detector-hand, detector-foot, hand-narrowing,
                                           foot-narrowing, foot-erosion, wrist-erosion, wrist-narrowing
    RUN/config.json                        the pipeline configuration, with `box_priors`

`load_run(path)` takes any of these model files and finds the others beside it.

Reference:
    Chaturvedi, "DeepRA", §3, §4.2, §4.3, Fig. 3; keras-retinanet `filter_detections`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.export import load_model
from common.image_io import read_image
from common.inference import compiled_forward
from common.run_config import CONFIG_NAME
from common.run_config import read_config_file
from deepra.columns import FOOT_LIMBS
from deepra.columns import HAND_LIMBS
from deepra.columns import JOINT_MODELS
from deepra.columns import LIMBS
from deepra.columns import detector_classes
from deepra.data import extract_crops
from deepra.data import joint_records
from deepra.detector import decode_detections
from deepra.detector import decode_per_class
from deepra.detector import padded_size
from deepra.detector import prepare_image

MAIN_MODEL = "hand-erosion"
DETECTOR_NAMES = {"hand": "detector-hand", "foot": "detector-foot"}
MODEL_NAMES = (DETECTOR_NAMES["hand"], DETECTOR_NAMES["foot"], *JOINT_MODELS)
RIGHT_LIMBS = ("RH", "RF")
DETECTION_COLUMNS = (
    "image",
    "film",
    "patient_id",
    "limb",
    "label",
    "score",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "source",
)


def limb_kind(limb):
    """ "hand" for LH/RH, "foot" for LF/RF."""
    if limb in HAND_LIMBS:
        return "hand"
    if limb in FOOT_LIMBS:
        return "foot"
    raise ValueError(f"Unknown limb '{limb}'. Available: {list(LIMBS)}")


def mirror_boxes(frame, width_by_image):
    """Mirrors `xmin`/`xmax` of boxes horizontally: x -> W - 1 - x (pixel indices, as labelImg).

    Args:
        frame: boxes with `image, xmin, xmax`.
        width_by_image: dict image -> film width in pixels.

    Returns:
        a copy of `frame` with mirrored x coordinates.
    """
    out = frame.copy()
    widths = out["image"].map(width_by_image).to_numpy(np.float64)
    x0 = out["xmin"].to_numpy(np.float64)
    x1 = out["xmax"].to_numpy(np.float64)
    out["xmin"] = widths - 1.0 - x1
    out["xmax"] = widths - 1.0 - x0
    return out


# ---------------------------------------------------------------------------------------------
# Prior boxes (the fallback for classes the detector misses)


def box_priors(boxes, films):
    """Mean annotated box of every (limb, class), relative to the film size.

    Args:
        boxes: box records (`deepra.data.read_boxes`) of training films.
        films: film records with `path` and `limb` (to know each box's limb).

    Returns:
        dict {limb: {class: [x0, y0, x1, y1] as fractions of the film width/height}}; limbs and
        classes without annotations are left out.
    """
    limb_of = {str(Path(p).resolve()): limb for p, limb in zip(films["path"], films["limb"])}
    rows = []
    sizes = {}
    for record in boxes.to_dict("records"):
        key = str(Path(record["image"]).resolve())
        limb = limb_of.get(key)
        if limb is None:
            continue
        if key not in sizes:
            sizes[key] = read_image(key).shape
        h, w = sizes[key]
        rows.append(
            (
                limb,
                record["label"],
                record["xmin"] / w,
                record["ymin"] / h,
                record["xmax"] / w,
                record["ymax"] / h,
            )
        )
    frame = pd.DataFrame(rows, columns=["limb", "label", "x0", "y0", "x1", "y1"])
    priors = {}
    for (limb, label), group in frame.groupby(["limb", "label"], sort=True):
        priors.setdefault(limb, {})[label] = [
            round(float(v), 5) for v in group[["x0", "y0", "x1", "y1"]].mean()
        ]
    return priors


def _prior_box(priors, limb, label, h, w):
    relative = (priors or {}).get(limb, {}).get(label)
    if relative is None:
        # no annotation of this class at all: the whole film (the crop is then uninformative)
        relative = [0.0, 0.0, 1.0, 1.0]
    x0, y0, x1, y1 = relative
    return x0 * w, y0 * h, x1 * w - 1.0, y1 * h - 1.0


# ---------------------------------------------------------------------------------------------
# Stage 1


def _clip_box(x0, y0, x1, y1, h, w, min_size=4.0):
    x0, x1 = min(max(x0, 0.0), w - 1.0), min(max(x1, 0.0), w - 1.0)
    y0, y1 = min(max(y0, 0.0), h - 1.0), min(max(y1, 0.0), h - 1.0)
    if x1 - x0 < min_size:
        c = 0.5 * (x0 + x1)
        x0, x1 = max(0.0, c - min_size / 2), min(w - 1.0, c + min_size / 2)
    if y1 - y0 < min_size:
        c = 0.5 * (y0 + y1)
        y0, y1 = max(0.0, c - min_size / 2), min(h - 1.0, c + min_size / 2)
    return x0, y0, x1, y1


def detect_films(
    detectors,
    films,
    *,
    priors=None,
    mirror_right_limbs=True,
    image_min_side=None,
    image_max_side=None,
    batch_size=8,
    progress=None,
    return_all=False,
    box_fusion=False,
    cluster_digits=(),
):
    """Finds every finger, toe and wrist of each film: one box per class (stage 1).

    Args:
        detectors: dict {"hand": detector, "foot": detector}; a kind without detector gets prior
            boxes only.
        films: film records with `path`, `limb` (and `patient_id`).
        priors: `box_priors(...)`, used for classes the detector misses.
        mirror_right_limbs: mirror RH/RF films before detection (as the detectors were trained).
        image_min_side, image_max_side: dict kind -> the detector's resize sides (default: the
            detector's `deepra_config`, which a reloaded model lacks: then give them).
        batch_size: films per forward pass.
        progress: optional callable(n_done) for progress display.
        return_all: also return every detection (per-class NMS, up to 10 per class and film),
            for average precision.
        box_fusion: fuse each box with the overlapping anchor boxes of its class
            (`deepra.detector.decode_per_class`).
        cluster_digits: kinds ("hand", "foot") whose digits are found by `digits_by_clusters`
            instead of each class's most confident box.

    Returns:
        pandas DataFrame with `DETECTION_COLUMNS`, one row per film and class, boxes in film
        pixels; `source` is "detector" or "prior". With `return_all`, `(that, all detections)`
        where the second has `image, label, score, xmin, ymin, xmax, ymax`.
    """
    rows = []
    everything = []
    films = films.reset_index(drop=True)
    done = 0
    for kind in ("hand", "foot"):
        subset = films[[limb_kind(limb) == kind for limb in films["limb"]]]
        if len(subset) == 0:
            continue
        model = detectors.get(kind)
        names = list(detector_classes("LH" if kind == "hand" else "LF"))
        sides = {
            "image_min_side": (image_min_side or {}).get(kind),
            "image_max_side": (image_max_side or {}).get(kind),
            "max_level": None,
        }
        if model is not None:
            base = getattr(model, "deepra_config", {})
            for key in ("image_min_side", "image_max_side"):
                sides[key] = sides[key] or base.get(key)
            sides["max_level"] = int(model.backbone.max_level)
            if not sides["image_min_side"] or not sides["image_max_side"]:
                raise ValueError(f"the {kind} detector's image sides are unknown")
        records = subset.to_dict("records")
        for start in range(0, len(records), int(batch_size)):
            chunk = records[start : start + int(batch_size)]
            films_px = []
            for record in chunk:
                film = read_image(record["path"])
                if mirror_right_limbs and record["limb"] in RIGHT_LIMBS:
                    film = film[:, ::-1]
                films_px.append(film)
            found = pd.DataFrame(columns=["image_index", "label", "score", *_XYXY])
            if model is not None:
                prepared = [prepare_image(f, sides) for f in films_px]
                ph = max(p[0].shape[0] for p in prepared)
                pw = max(p[0].shape[1] for p in prepared)
                ph, pw = padded_size(ph, pw, sides)
                batch = np.zeros((len(prepared), ph, pw, 3), np.float32)
                for i, (image, _) in enumerate(prepared):
                    batch[i, : image.shape[0], : image.shape[1]] = image
                raw = model(batch, training=False)
                decoded = decode_per_class(model, raw, (ph, pw), box_fusion=box_fusion)
                found = decode_detections(
                    decoded, names, scales=[p[1] for p in prepared], best_per_class=False
                )
                found = _unmirror(found, chunk, films_px, mirror_right_limbs)
                if return_all:
                    everything.append(
                        found.assign(image=[str(chunk[i]["path"]) for i in found["image_index"]])
                    )
                found = _best_boxes(found, chunk, names, kind in cluster_digits)
            by_key = {(int(r["image_index"]), r["label"]): r for r in found.to_dict("records")}
            for i, (record, film) in enumerate(zip(chunk, films_px, strict=True)):
                h, w = film.shape
                for label in names:
                    hit = by_key.get((i, label))
                    if hit is not None:
                        x0, y0, x1, y1 = (hit[k] for k in _XYXY)
                        score, source = float(hit["score"]), "detector"
                    else:
                        x0, y0, x1, y1 = _prior_box(priors, record["limb"], label, h, w)
                        score, source = 0.0, "prior"
                    x0, y0, x1, y1 = _clip_box(x0, y0, x1, y1, h, w)
                    rows.append(
                        (
                            str(record["path"]),
                            Path(record["path"]).name,
                            str(record.get("patient_id", "")),
                            record["limb"],
                            label,
                            score,
                            x0,
                            y0,
                            x1,
                            y1,
                            source,
                        )
                    )
            done += len(chunk)
            if progress is not None:
                progress(done)
    best = pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))
    if not return_all:
        return best
    columns = ["image", "label", "score", *_XYXY]
    found = (
        pd.concat(everything, ignore_index=True)[columns]
        if everything
        else pd.DataFrame(columns=columns)
    )
    return best, found


_XYXY = ("xmin", "ymin", "xmax", "ymax")


DIGIT_MIN_SCORE = 0.3


def digits_by_clusters(found, digit_names, thumb_on_right, min_score=DIGIT_MIN_SCORE):
    """The digits of one film from all confident digit boxes, named by their left-right order.

    The most confident box of each class is what the paper's pipeline crops. Toes 2-5 are thin,
    parallel and alike, and a detector trained for minutes names a toe after its neighbour or
    puts two classes on one toe (on the demo's phantom feet 45% of the "finger1"-"finger3"
    boxes were on another toe). Their order across the foot is certain, though: here every box
    of a digit class scoring at least `min_score` votes with its score for where the digits are
    (1-D k-means of the box centres across the film, started from the classes' best boxes), each
    digit's box is the score-weighted mean of its cluster's boxes, and the clusters are named
    from the big toe (thumb) side: toe (thumb), finger1, ..., finger4. On the same films 97% of
    the toes were then named right, at a mean IoU of 0.68 against 0.53.

    Args:
        found: every detection of one film (`label, score, xmin, ymin, xmax, ymax`).
        digit_names: the digit classes from the big toe (thumb) on.
        thumb_on_right: whether the big toe (thumb) is on the right of the film.
        min_score: the score a box needs to vote.

    Returns:
        pandas DataFrame with one row per digit class (`label, score, xmin..ymax`), or None when
        fewer confident boxes than digits, or an empty cluster, leave the order unclear.
    """
    votes = found[found["label"].isin(digit_names) & (found["score"] >= min_score)]
    if len(votes) < len(digit_names):
        return None
    best = votes.sort_values("score", ascending=False, kind="stable").drop_duplicates("label")
    if len(best) < len(digit_names):
        return None
    x = 0.5 * (votes["xmin"] + votes["xmax"]).to_numpy(np.float64)
    weights = votes["score"].to_numpy(np.float64)
    centres = np.sort(0.5 * (best["xmin"] + best["xmax"]).to_numpy(np.float64))
    for _ in range(50):
        member = np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)
        if len(set(member.tolist())) < len(centres):
            return None
        updated = np.array(
            [np.average(x[member == k], weights=weights[member == k]) for k in range(len(centres))]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    member = np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)
    coords = votes[list(_XYXY)].to_numpy(np.float64)
    order = np.argsort(centres)[::-1] if thumb_on_right else np.argsort(centres)
    rows = []
    for name, k in zip(digit_names, order, strict=True):
        chosen = member == k
        if not chosen.any():
            return None
        box = (coords[chosen] * weights[chosen, None]).sum(0) / weights[chosen].sum()
        rows.append({"label": name, "score": float(weights[chosen].max()), **dict(zip(_XYXY, box))})
    return pd.DataFrame(rows)


def _best_boxes(found, chunk, names, by_clusters):
    """The crop box of every class and film: the class's most confident box, or the digits of
    `digits_by_clusters` where asked for and clear."""
    best = found.sort_values(["image_index", "score"], ascending=[True, False], kind="stable")
    best = best.drop_duplicates(["image_index", "label"], keep="first")
    if not by_clusters or len(found) == 0:
        return best
    digit_names = [n for n in names if n != "wrist"]
    parts = []
    for i, record in enumerate(chunk):
        mine = best[best["image_index"] == i]
        # boxes are in film coordinates here: a right limb's big toe (thumb) is on the left
        digits = digits_by_clusters(
            found[found["image_index"] == i], digit_names, record["limb"] not in RIGHT_LIMBS
        )
        if digits is not None:
            mine = pd.concat(
                [digits.assign(image_index=i), mine[~mine["label"].isin(digit_names)]],
                ignore_index=True,
            )
        parts.append(mine)
    return pd.concat(parts, ignore_index=True) if parts else best


def _unmirror(found, chunk, films_px, mirror_right_limbs):
    """Boxes found on mirrored right-limb films, mirrored back to the film as stored."""
    if not mirror_right_limbs or len(found) == 0:
        return found
    found = found.copy()
    for i, (record, film) in enumerate(zip(chunk, films_px, strict=True)):
        if record["limb"] not in RIGHT_LIMBS:
            continue
        rows = found["image_index"] == i
        w = film.shape[1]
        x0 = found.loc[rows, "xmin"].to_numpy()
        found.loc[rows, "xmin"] = w - 1.0 - found.loc[rows, "xmax"].to_numpy()
        found.loc[rows, "xmax"] = w - 1.0 - x0
    return found


# ---------------------------------------------------------------------------------------------
# Stage 2


def grow_boxes(boxes, margin):
    """Boxes enlarged by `margin` of their width and height on every side (crops are then
    clipped to the film).

    Args:
        boxes: frame with `xmin, ymin, xmax, ymax`.
        margin: fraction, e.g. 0.1.

    Returns:
        a copy of `boxes`.
    """
    out = boxes.copy()
    if not margin:
        return out
    w = out["xmax"] - out["xmin"]
    h = out["ymax"] - out["ymin"]
    out["xmin"] = out["xmin"] - margin * w
    out["xmax"] = out["xmax"] + margin * w
    out["ymin"] = out["ymin"] - margin * h
    out["ymax"] = out["ymax"] + margin * h
    return out


def predict_joints(models, films, detections, *, margin=0.0, batch_size=64, explain=False):
    """Runs every joint model on the crops it predicts (stage 2).

    Args:
        models: dict {joint model key (`deepra.columns.JOINT_MODELS`): keras model}.
        films: film records (`path, limb, patient_id`; score columns are carried as truth when
            present).
        detections: boxes (`detect_films` or annotations with `image, label, xmin..ymax`).
        margin: enlarge every box by this fraction on each side before cropping (`grow_boxes`).
        batch_size: crops per forward pass.
        explain: also return each crop's attention weights.

    Returns:
        dict {model key: crop records (`deepra.data.joint_records`) whose output columns hold the
        PREDICTIONS, the truth (when the films carry it) in `<output>__true`, and, with `explain`,
        the attention weights `(N, h, w)` under `records.attrs["attention"]` and the crops under
        `records.attrs["crops"]`}.
    """
    from deepra.joints import explain_joint_model

    results = {}
    detections = grow_boxes(detections, margin)
    for key, model in models.items():
        records = joint_records(films, detections, key)
        if len(records) == 0:
            continue
        h, w = (int(v) for v in model.input_shape[1:3])
        crops = extract_crops(records, (h, w), dtype=np.float32)
        if int(model.input_shape[-1]) == 3:
            crops = np.repeat(crops, 3, axis=-1)
        runner = compiled_forward(explain_joint_model(model) if explain else model)
        outputs, masks = {}, []
        for start in range(0, len(crops), int(batch_size)):
            out = runner(crops[start : start + int(batch_size)])
            for name in model.output_names:
                outputs.setdefault(name, []).append(np.asarray(out[name]).reshape(-1))
            if explain:
                masks.append(np.asarray(out["attention_mask"])[..., 0])
        records = records.copy()
        for name in model.output_names:
            records[f"{name}__true"] = records[name]
            records[name] = np.concatenate(outputs[name]).astype(np.float64)
        if explain:
            records.attrs["attention"] = np.concatenate(masks)
            records.attrs["crops"] = crops[..., 0]
        results[key] = records
    return results


# ---------------------------------------------------------------------------------------------
# Run folders


def run_dir_of(model_path):
    """The run folder of a model file: its folder, or the folder above `models/`."""
    path = Path(model_path)
    if path.parent.name == "models" and (path.parent.parent / "config.json").is_file():
        return path.parent.parent
    return path.parent


def model_paths(run_dir, suffix):
    """{model name: path} of a run's nine model files in one format (`.h5` or `.keras`)."""
    run_dir = Path(run_dir)
    paths = {MAIN_MODEL: run_dir / f"model{suffix}"}
    for name in MODEL_NAMES:
        if name != MAIN_MODEL:
            paths[name] = run_dir / "models" / f"{name}{suffix}"
    return paths


def read_pipeline_config(run_dir):
    """The pipeline configuration of a run (`RUN/config.json`), which must be a deepra run's."""
    path = Path(run_dir) / CONFIG_NAME
    config = read_config_file(
        path,
        required=True,
        missing="no config.json beside the model: give a deepra run's model.h5 / model.keras "
        "(its run folder holds config.json and models/)",
    )
    if config.get("package") != "deepra":
        raise DataError("config.json is not a deepra pipeline run's", path=path)
    return config


def load_run(model_path):
    """Loads a run's detectors and joint models from any one of its model files.

    Args:
        model_path: `RUN/model.h5` or `RUN/model.keras` (or `RUN/models/<name>.<suffix>`); the
            other eight models are read in the same format from beside it (the other format is
            used for a model missing in this one).

    Returns:
        `(config, models)`: the run's configuration and dict {name: keras model} with
        `detector-hand`, `detector-foot` and the six joint model keys.

    Raises:
        DataError: the file is not a model file, or a model of the run is missing.
        FileNotFoundError: `model_path` does not exist.
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(2, "no such model file", str(path))
    suffix = "".join(path.suffixes[-1:])
    if suffix not in (".h5", ".keras"):
        raise DataError("a model file must end in .h5 or .keras", path=path)
    run_dir = run_dir_of(path)
    config = read_pipeline_config(run_dir)
    other = ".keras" if suffix == ".h5" else ".h5"
    wanted = config.get("models", list(MODEL_NAMES))
    models = {}
    for name, candidate in model_paths(run_dir, suffix).items():
        if name not in wanted:
            continue
        if not candidate.is_file():
            candidate = model_paths(run_dir, other)[name]
        if not candidate.is_file():
            raise DataError(f"model '{name}' of this run is missing", path=candidate)
        models[name] = load_model(candidate)
    return config, models


def split_models(models):
    """(detectors {"hand", "foot"}, joint models {key}) from `load_run`'s dict."""
    detectors = {kind: models[name] for kind, name in DETECTOR_NAMES.items() if name in models}
    joints = {key: models[key] for key in JOINT_MODELS if key in models}
    return detectors, joints


def detector_sides(config):
    """dict with `image_min_side` and `image_max_side` per detector kind from a run config."""
    detectors = config.get("detectors", {})
    return {
        "image_min_side": {k: v["image_min_side"] for k, v in detectors.items()},
        "image_max_side": {k: v["image_max_side"] for k, v in detectors.items()},
    }


def finite_or_nan(value):
    """float(value), NaN for None."""
    return math.nan if value is None else float(value)
