"""Phantom upper-extremity radiographs in the MURA-v1.1 layout, with the lesions' ground truth.

The layout is the real archive's:

    <root>/MURA-v1.1/train_image_paths.csv       MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    <root>/MURA-v1.1/train_labeled_studies.csv   MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1
    <root>/MURA-v1.1/valid_image_paths.csv
    <root>/MURA-v1.1/valid_labeled_studies.csv
    <root>/MURA-v1.1/{train,valid}/XR_<PART>/patient<NNNNN>/study<K>_{positive,negative}/image<J>.png

with headerless CSVs, study paths ending in `/`, label 1 = abnormal, patients numbered through train
then valid (no patient in both), some patients with studies of several body parts, some PNGs stored
as RGB, and macOS `._image<J>.png` AppleDouble files (and a `.DS_Store`) that no CSV lists.

Each image is a radiograph-like view of one of the seven MURA study types (elbow, finger, forearm,
hand, humerus, shoulder, wrist): dark background, soft tissue, bones drawn as capsules with a bright
cortex, a darker medullary canal and flared ends, joints with their gaps. A study has 1-4 views
(AP, lateral with overlapping bones, oblique). An abnormal study has one lesion on one bone: a
fracture (a lucent line across the bone), a metal implant (a plate with screws, a nail, or wires)
or a lytic lesion (a lucent oval with a thin sclerotic rim); it shows on each view with probability
0.9 and on at least one. Normal and abnormal studies alike carry confounders: lead side markers
and, in young patients, faint growth plates near the bone ends.

The ground truth is kept outside the real layout, in `<root>/_phantom_truth/`: `index.csv` (one row
per image that shows a lesion: `image` (the path as in the CSVs, relative to root), `study`,
`body_part`, `label`, `kind`, `mask` (relative to root), `x0, y0, x1, y1` (the lesion's box in image
pixels, end exclusive)) and the lesion masks as PNGs under `_phantom_truth/masks/`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from common import phantoms as ph
from common.fileio import atomic_write_bytes

DATASET_DIR = "MURA-v1.1"
TRUTH_DIR = "_phantom_truth"
BODY_PARTS = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
# Fraction of abnormal studies per study type, roughly MURA's (Rajpurkar et al. 2018, Table 1).
ABNORMAL_RATE = {
    "elbow": 0.40,
    "finger": 0.38,
    "forearm": 0.36,
    "hand": 0.28,
    "humerus": 0.48,
    "shoulder": 0.50,
    "wrist": 0.39,
}
LESION_KINDS = ("fracture", "implant", "lytic")
LESION_PROBS = (0.45, 0.25, 0.30)
VIEWS_PER_STUDY_PROBS = (0.15, 0.35, 0.30, 0.20)  # 1, 2, 3 or 4 views
VALID_FRACTION = 0.2
RGB_FRACTION = 0.1
JUNK_FRACTION = 0.08
LESION_VISIBLE_PROB = 0.9
APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


def write_phantom_dataset(root, *, num_subjects=600, seed=0, image_size_range=(192, 256)):
    """Writes a phantom MURA-v1.1 data set under `root` and its lesion truth under `root/_phantom_truth`.

    Args:
        root: folder to write into (created); `MURA-v1.1/` and `_phantom_truth/` go inside it.
        num_subjects: number of patients (about 1.3 studies and 3.4 images each); 20% of them go
            to the `valid` split. The default (600, about 2,000 images) trains the `demo` preset
            in a few minutes.
        seed: random seed; the same seed writes the same files.
        image_size_range: `(low, high)` of the image height in pixels (each view draws its own;
            the width is 0.72-0.95 of it, 0.95-1.15 for shoulders).

    Returns:
        `pathlib.Path` of `root`.

    Raises:
        ValueError: num_subjects < 2 (both splits need a patient).
    """
    num_subjects = int(num_subjects)
    if num_subjects < 2:
        raise ValueError(f"num_subjects must be at least 2, got {num_subjects}")
    root = Path(root)
    dataset = root / DATASET_DIR
    dataset.mkdir(parents=True, exist_ok=True)
    plan = _plan_studies(num_subjects, seed)
    total_images = sum(len(study["views"]) for study in plan)
    progress = _progress(total_images)
    image_rows = {"train": [], "valid": []}
    study_rows = {"train": [], "valid": []}
    truth_rows = []
    for study in plan:
        part_dir = f"XR_{study['part'].upper()}"
        rel_study = (
            f"{DATASET_DIR}/{study['split']}/{part_dir}/{study['patient']}/{study['folder']}/"
        )
        study_rows[study["split"]].append((rel_study, study["label"]))
        for j, view in enumerate(study["views"], start=1):
            rel_image = f"{rel_study}image{j}.png"
            image, mask = _draw_view(study, view, image_size_range)
            _write_image(root / rel_image, image, rgb=view["rgb"])
            image_rows[study["split"]].append(rel_image)
            if mask is not None:
                rel_mask = f"{TRUTH_DIR}/masks/{rel_image[len(DATASET_DIR) + 1 :]}"
                ph.write_png(root / rel_mask, mask.astype(np.float32))
                x0, y0, x1, y1 = ph.mask_bbox(mask)
                truth_rows.append(
                    [rel_image, rel_study, study["part"], study["label"], study["lesion"]["kind"]]
                    + [rel_mask, x0, y0, x1, y1]
                )
            if view["junk"]:
                atomic_write_bytes(root / rel_study / f"._image{j}.png", _appledouble(j))
            progress.update(1)
    progress.close()
    for split in ("train", "valid"):
        _write_csv(dataset / f"{split}_image_paths.csv", [[p] for p in image_rows[split]])
        _write_csv(dataset / f"{split}_labeled_studies.csv", study_rows[split])
    atomic_write_bytes(dataset / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64))
    header = ["image", "study", "body_part", "label", "kind", "mask", "x0", "y0", "x1", "y1"]
    _write_csv(root / TRUTH_DIR / "index.csv", truth_rows, header=header)
    return root


# --------------------------------------------------------------------------- planning


def _plan_studies(num_subjects, seed):
    """Patients, their studies and views: every random choice except the drawing itself."""
    rng = np.random.default_rng([int(seed), 0])
    num_valid = max(1, int(round(num_subjects * VALID_FRACTION)))
    num_train = num_subjects - num_valid
    if num_train < 1:
        num_train, num_valid = 1, num_subjects - 1
    plan = []
    for index in range(num_subjects):
        split = "train" if index < num_train else "valid"
        patient = f"patient{index + 1:05d}"
        num_parts = 1 if rng.random() < 0.85 else 2
        parts = rng.choice(len(BODY_PARTS), size=num_parts, replace=False)
        young = bool(rng.random() < 0.15)
        for part_index in sorted(parts):
            part = BODY_PARTS[int(part_index)]
            num_studies = 1 if rng.random() < 0.85 else 2
            for k in range(1, num_studies + 1):
                label = int(rng.random() < ABNORMAL_RATE[part])
                plan.append(
                    _plan_study(rng, seed, split, patient, part, k, label, young, len(plan))
                )
    # The real CSVs list the studies grouped by study type.
    plan.sort(key=lambda s: (s["split"] != "train", s["part"], s["patient"], s["folder"]))
    return plan


def _plan_study(rng, seed, split, patient, part, k, label, young, serial):
    num_views = int(rng.choice(4, p=VIEWS_PER_STUDY_PROBS)) + 1
    lesion = None
    if label:
        kind = LESION_KINDS[int(rng.choice(len(LESION_KINDS), p=LESION_PROBS))]
        shows = rng.random(num_views) < LESION_VISIBLE_PROB
        shows[int(rng.integers(num_views))] = True
        lesion = {
            "kind": kind,
            "shows": [bool(v) for v in shows],
            "bone_choice": float(rng.random()),
            "t": float(rng.uniform(0.3, 0.7)),
            "variant": float(rng.random()),
        }
    views = []
    for v in range(num_views):
        views.append(
            {
                "index": v,
                "projection": ("ap", "lateral", "oblique", "ap")[v],
                "rgb": bool(rng.random() < RGB_FRACTION),
                "junk": bool(rng.random() < JUNK_FRACTION),
                "seed": [int(seed), 1, serial, v],
            }
        )
    return {
        "split": split,
        "patient": patient,
        "part": part,
        "folder": f"study{k}_{'positive' if label else 'negative'}",
        "label": label,
        "young": young,
        "anatomy_seed": [int(seed), 2, serial],
        "lesion": lesion,
        "views": views,
    }


# --------------------------------------------------------------------------- drawing


class _Canvas:
    """An image being drawn, with the bones drawn so far (for placing lesions)."""

    def __init__(self, shape_hw, rng):
        self.rng = rng
        self.h, self.w = shape_hw
        self.s = float(min(shape_hw))
        background = rng.uniform(0.03, 0.10)
        self.img = ph.blank(shape_hw, background)
        self.img += (0.015 * ph.smooth_noise(shape_hw, self.s / 6, rng)).astype(np.float32)
        self.img = ph.clip01(self.img)
        self.bone_mask = ph.blank(shape_hw)
        self.bones = []  # (p0, p1, radius, eligible for lesions)
        self.cortex = rng.uniform(0.62, 0.80)

    def p(self, x, y):
        """A point from fractions of the width and height."""
        return (x * self.w, y * self.h)

    def soft_tissue(self, p0, p1, radius_frac, value=None):
        value = self.rng.uniform(0.22, 0.32) if value is None else value
        ph.draw_capsule(self.img, p0, p1, radius_frac * self.s, value=value, mode="max")

    def bone(self, p0, p1, radius_frac, eligible=True, flare=1.25):
        """A long bone: cortex, flared ends, medullary canal."""
        r = radius_frac * self.s
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        axis = p1 - p0
        length = float(np.hypot(*axis))
        angle = float(np.degrees(np.arctan2(axis[1], axis[0])))
        value = self.cortex * self.rng.uniform(0.95, 1.05)
        ph.draw_capsule(self.img, p0, p1, r, value=value, mode="max")
        for end in (p0, p1):
            ph.draw_ellipse(
                self.img, end, (r * 0.95, r * flare), angle_deg=angle, value=value, mode="max"
            )
            ph.draw_ellipse(self.bone_mask, end, (r * 0.95, r * flare), angle_deg=angle, mode="max")
        ph.draw_capsule(self.bone_mask, p0, p1, r, value=1.0, mode="max")
        if length > 4 * r:
            d = axis / length
            ph.draw_capsule(
                self.img,
                p0 + d * 1.2 * r,
                p1 - d * 1.2 * r,
                r * 0.5,
                value=-0.12 * self.cortex,
                mode="add",
            )
        self.bones.append((p0, p1, r, eligible))

    def blob(self, center, axes_frac, angle=0.0):
        """A short bone (carpal, humeral head, condyle)."""
        axes = (axes_frac[0] * self.s, axes_frac[1] * self.s)
        value = self.cortex * self.rng.uniform(0.92, 1.02)
        ph.draw_ellipse(self.img, center, axes, angle_deg=angle, value=value, mode="max")
        ph.draw_ellipse(self.bone_mask, center, axes, angle_deg=angle, mode="max")


def _draw_anatomy(c, part, projection, anatomy_rng):
    """Draws the bones of one study type; `projection` changes how bones overlap."""
    j = anatomy_rng.uniform(-0.03, 0.03, size=8)
    spread = {"ap": 1.0, "lateral": 0.35, "oblique": 0.65}[projection]
    if part == "forearm":
        c.soft_tissue(c.p(0.5, -0.1), c.p(0.5, 1.1), 0.24)
        dx = 0.09 * spread
        c.bone(c.p(0.5 - dx + j[0], 0.08), c.p(0.5 - dx - 0.02, 0.92), 0.045 + j[1] / 10)
        c.bone(c.p(0.5 + dx + j[2], 0.06), c.p(0.5 + dx + 0.01, 0.94), 0.038 + j[3] / 10)
    elif part == "humerus":
        c.soft_tissue(c.p(0.5, -0.1), c.p(0.5, 1.1), 0.34)
        c.bone(c.p(0.5 + j[0], 0.16), c.p(0.5 + j[1], 0.90), 0.075)
        c.blob(c.p(0.5 + j[0] + 0.02, 0.11), (0.14, 0.12))
        c.blob(c.p(0.5 + j[1], 0.92), (0.13 * (0.6 + 0.4 * spread), 0.05))
    elif part == "elbow":
        bend = 0.12 if projection == "lateral" else 0.0
        c.soft_tissue(c.p(0.5, -0.1), c.p(0.5, 0.5), 0.32)
        c.soft_tissue(c.p(0.5, 0.5), c.p(0.5 + bend, 1.1), 0.28)
        c.bone(c.p(0.5 + j[0], 0.02), c.p(0.5, 0.40), 0.07)
        c.blob(c.p(0.5, 0.44), (0.17 * (0.5 + 0.5 * spread), 0.07))
        dx = 0.07 * spread
        c.bone(c.p(0.5 - dx, 0.56), c.p(0.5 - dx + bend + j[2], 0.98), 0.045)
        c.bone(c.p(0.5 + dx, 0.53), c.p(0.5 + dx + bend + j[3], 0.98), 0.05)
        c.blob(c.p(0.5 + dx + 0.02, 0.52), (0.06, 0.045))
    elif part == "wrist":
        c.soft_tissue(c.p(0.5, -0.1), c.p(0.5, 1.1), 0.30)
        dx = 0.09 * spread
        c.bone(c.p(0.5 - dx + j[0], 0.60), c.p(0.5 - dx, 1.05), 0.055, flare=1.6)
        c.bone(c.p(0.5 + dx + j[1], 0.63), c.p(0.5 + dx, 1.05), 0.035)
        for k in range(8):
            cx = 0.5 + (k % 4 - 1.5) * 0.075 * (0.6 + 0.4 * spread) + j[k] / 2
            cy = 0.47 - (k // 4) * 0.09
            c.blob(c.p(cx, cy), (0.035, 0.03), angle=float(anatomy_rng.uniform(-30, 30)))
        for k in range(5):
            x0 = 0.5 + (k - 2) * 0.07 * (0.5 + 0.5 * spread)
            c.bone(c.p(x0, 0.33), c.p(x0 + (k - 2) * 0.04, 0.02), 0.026, eligible=k > 0)
    elif part == "hand":
        c.soft_tissue(c.p(0.5, 0.75), c.p(0.5, 1.1), 0.28)
        for k in range(8):
            cx = 0.5 + (k % 4 - 1.5) * 0.06 * (0.6 + 0.4 * spread)
            cy = 0.86 - (k // 4) * 0.06
            c.blob(c.p(cx, cy), (0.028, 0.024))
        for k in range(5):
            fan = (k - 2) * 0.10 * (0.5 + 0.5 * spread) + j[k]
            base = np.array(c.p(0.5 + (k - 2) * 0.05, 0.76))
            if k == 0:  # the thumb
                base = np.array(c.p(0.38, 0.80))
                fan = -0.28 * (0.6 + 0.4 * spread)
            direction = np.array([fan * c.w, -0.95 * c.h])
            direction /= np.hypot(*direction)
            lengths = (0.24, 0.14, 0.09, 0.06) if k else (0.16, 0.10, 0.07)
            radii = (0.022, 0.019, 0.016, 0.013) if k else (0.024, 0.02, 0.017)
            start = base
            for n, (length, radius) in enumerate(zip(lengths, radii, strict=True)):
                end = start + direction * length * c.h
                c.soft_tissue(start, end, radius * 2.1 / (1.0 if n else 1.6))
                c.bone(start, end, radius, eligible=n < 2)
                start = end + direction * 0.018 * c.h
    elif part == "finger":
        c.soft_tissue(c.p(0.5, 0.05), c.p(0.5, 1.1), 0.17)
        bend = 0.05 if projection == "lateral" else 0.0
        segments = ((0.97, 0.62, 0.060), (0.58, 0.36, 0.050), (0.32, 0.14, 0.042))
        for n, (y0, y1, r) in enumerate(segments):
            x = 0.5 + j[n] / 2 + bend * n
            c.bone(c.p(x, y0), c.p(x + bend, y1), r, flare=1.35)
    else:  # shoulder
        c.soft_tissue(c.p(0.75, -0.1), c.p(0.75, 1.1), 0.40)
        c.soft_tissue(c.p(-0.1, 0.3), c.p(0.75, 0.3), 0.30, value=0.2)
        ph.draw_polygon(
            c.img,
            [c.p(0.05, 0.25), c.p(0.38, 0.30), c.p(0.35, 0.62), c.p(0.12, 0.95)],
            value=0.38,
            mode="max",
        )
        c.bone(c.p(0.05 + j[0], 0.14), c.p(0.72, 0.20 + j[1]), 0.035, flare=1.1)
        c.blob(c.p(0.36, 0.45), (0.04, 0.11))
        c.blob(c.p(0.54 + j[2], 0.44), (0.15 * (0.7 + 0.3 * spread), 0.15))
        c.bone(c.p(0.60 + j[2], 0.52), c.p(0.66, 1.05), 0.075)


def _pick_bone(c, choice):
    eligible = [b for b in c.bones if b[3] and np.hypot(*(b[1] - b[0])) > 3.0 * b[2]]
    if not eligible:
        eligible = c.bones
    # Prefer long bones: weight by length.
    lengths = np.array([np.hypot(*(b[1] - b[0])) for b in eligible])
    cumulative = np.cumsum(lengths) / lengths.sum()
    return eligible[
        int(np.searchsorted(cumulative, choice, side="right").clip(0, len(eligible) - 1))
    ]


def _single_bone_mask(c, bone):
    p0, p1, r, _ = bone
    mask = ph.blank((c.h, c.w))
    ph.draw_capsule(mask, p0, p1, r, value=1.0, mode="max")
    return mask


def _draw_lesion(c, lesion, rng):
    """Draws `lesion` on one bone of the canvas; returns the lesion mask (float32 in [0, 1])."""
    bone = _pick_bone(c, lesion["bone_choice"])
    p0, p1, r, _ = bone
    axis = p1 - p0
    length = float(np.hypot(*axis))
    d = axis / length
    n = np.array([-d[1], d[0]])
    t = lesion["t"]
    center = p0 + axis * t
    bone_mask = _single_bone_mask(c, bone)
    mask = ph.blank((c.h, c.w))
    kind = lesion["kind"]
    if kind == "fracture":
        tilt = np.radians(rng.uniform(-35, 35))
        across = n * np.cos(tilt) + d * np.sin(tilt)
        thickness = max(3.0, r * rng.uniform(0.35, 0.5))
        ph.draw_line(mask, center - across * 1.6 * r, center + across * 1.6 * r, thickness, 1.0)
        mask *= bone_mask
        depth = rng.uniform(0.38, 0.50)
        c.img = ph.clip01(c.img - depth * mask)
        # A displaced fragment: the far side shifted a little along the fracture.
        if lesion["variant"] < 0.5:
            step = ph.blank((c.h, c.w))
            ph.draw_capsule(step, center + n * r, center + n * r + d * 0.12 * length, 0.25 * r)
            step *= bone_mask
            c.img = ph.clip01(c.img + 0.12 * step)
    elif kind == "lytic":
        axes = (r * rng.uniform(1.5, 2.5), r * rng.uniform(0.6, 0.78))
        offset = n * r * rng.uniform(-0.2, 0.2)
        angle = float(np.degrees(np.arctan2(d[1], d[0])))
        rim = ph.blank((c.h, c.w))
        ph.draw_ellipse(rim, center + offset, (axes[0] + 2.0, axes[1] + 2.0), angle, 1.0)
        ph.draw_ellipse(mask, center + offset, axes, angle, 1.0)
        rim = np.clip(rim - mask, 0.0, 1.0) * bone_mask
        mask *= bone_mask
        c.img = ph.clip01(c.img + 0.10 * rim - rng.uniform(0.35, 0.45) * mask)
    else:  # implant
        metal = rng.uniform(0.93, 1.0)
        if lesion["variant"] < 0.5:  # plate and screws
            half = min(0.3 * length, 8.0 * r)
            side = n * r * 0.95
            ph.draw_capsule(mask, center - d * half + side, center + d * half + side, 0.28 * r)
            for s in np.linspace(-0.8, 0.8, 4):
                base = center + d * half * s
                ph.draw_line(mask, base + side * 1.2, base - n * r * 0.95, max(2.0, 0.3 * r), 1.0)
        elif lesion["variant"] < 0.8:  # intramedullary nail
            half = 0.30 * length
            ph.draw_capsule(mask, center - d * half, center + d * half, max(1.5, 0.3 * r))
        else:  # crossed wires
            for sign in (-1.0, 1.0):
                a = center + d * 2.2 * r * sign + n * 1.3 * r
                b = center - d * 2.2 * r * sign - n * 1.3 * r
                ph.draw_line(mask, a, b, max(1.5, 0.18 * r), 1.0)
        c.img = np.maximum(c.img, metal * mask).astype(np.float32)
    return mask


def _draw_growth_plates(c, rng):
    """Faint lucent lines near the ends of the long bones (normal in children): a confounder."""
    for p0, p1, r, eligible in c.bones:
        length = float(np.hypot(*(p1 - p0)))
        if not eligible or length < 4 * r or rng.random() < 0.5:
            continue
        d = (p1 - p0) / length
        n = np.array([-d[1], d[0]])
        end, sign = (p0, 1.0) if rng.random() < 0.5 else (p1, -1.0)
        at = end + d * sign * 0.9 * r
        line = ph.blank((c.h, c.w))
        ph.draw_line(line, at - n * 1.1 * r, at + n * 1.1 * r, max(1.2, 0.12 * r), 1.0)
        c.img = ph.clip01(c.img - 0.10 * line * c.bone_mask)


def _draw_marker(c, rng):
    """A lead side marker (`L` or `R`) in a corner: bright, in normal and abnormal views alike."""
    size = c.s * rng.uniform(0.05, 0.08)
    x = rng.choice([0.08 * c.w, 0.92 * c.w - size])
    y = rng.choice([0.06 * c.h, 0.94 * c.h - size])
    ph.draw_polygon(
        c.img,
        [
            (x - 2, y - 2),
            (x + size + 2, y - 2),
            (x + size + 2, y + size + 2),
            (x - 2, y + size + 2),
        ],
        0.15,
        "set",
    )
    w = max(1.5, size / 6)
    ph.draw_line(c.img, (x, y), (x, y + size), w, 0.97)
    if rng.random() < 0.5:  # L
        ph.draw_line(c.img, (x, y + size - w / 2), (x + size * 0.7, y + size - w / 2), w, 0.97)
    else:  # R
        ph.draw_line(c.img, (x, y + w / 2), (x + size * 0.6, y + w / 2), w, 0.97)
        ph.draw_line(c.img, (x + size * 0.6, y), (x + size * 0.6, y + size / 2), w, 0.97)
        ph.draw_line(c.img, (x, y + size / 2), (x + size * 0.7, y + size), w, 0.97)


def _draw_view(study, view, image_size_range):
    """One view of a study: returns `(image float32 (H, W), lesion mask uint8 or None)`."""
    rng = np.random.default_rng(view["seed"])
    low, high = (int(v) for v in image_size_range)
    h = int(rng.integers(low, high + 1))
    w = int(round(h * rng.uniform(0.72, 0.95)))
    if study["part"] == "shoulder":
        w = int(round(h * rng.uniform(0.95, 1.15)))
    c = _Canvas((h, w), rng)
    _draw_anatomy(
        c, study["part"], view["projection"], np.random.default_rng(study["anatomy_seed"])
    )
    bone_texture = ph.smooth_noise((h, w), 2.0, rng) * 0.02 * c.bone_mask
    c.img = ph.clip01(c.img + bone_texture)
    if study["young"]:
        _draw_growth_plates(c, rng)
    lesion = study["lesion"]
    mask = None
    if lesion is not None and lesion["shows"][view["index"]]:
        mask = _draw_lesion(c, lesion, np.random.default_rng([*view["seed"], 7]))
    if rng.random() < 0.4:
        _draw_marker(c, rng)
    masks = () if mask is None else ((mask > 0.5).astype(np.uint8),)
    img, masks = ph.random_affine(c.img, rng, 15.0, (0.06 * w, 0.06 * h), (0.9, 1.08), masks=masks)
    img = ph.blur(img, rng.uniform(0.4, 0.8))
    img = ph.adjust_contrast(img, rng.uniform(0.85, 1.15), rng.uniform(-0.04, 0.04))
    img = ph.add_noise(img, rng.uniform(0.008, 0.02), rng)
    if masks and masks[0].sum() < 4:
        mask_out = None  # warped out of the field of view
    else:
        mask_out = masks[0] if masks else None
    return img, mask_out


# --------------------------------------------------------------------------- files


def _write_image(path, img01, rgb):
    if not rgb:
        ph.write_png(path, img01)
        return
    gray = np.round(np.clip(img01, 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = np.repeat(gray[..., None], 3, axis=-1)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"could not encode PNG for {path}")
    atomic_write_bytes(path, encoded.tobytes(), durable=False)


def _appledouble(j):
    """The bytes of a small AppleDouble (`._name`) file, as macOS leaves in zip archives."""
    return APPLEDOUBLE_MAGIC + bytes(8) + f"image{j}.png".encode() + bytes(32)


def _write_csv(path, rows, header=None):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _progress(total):
    from common.progress import progress

    return progress(total=total, desc="phantom images", unit="img", enabled=total > 200)
