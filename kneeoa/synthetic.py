"""Phantom knee radiographs in the two real on-disk layouts, with KL grades drawn as image features.

Each knee is drawn as a PA radiograph: soft tissue, femoral shaft and condyles, tibial plateau with
its spines, fibular head, a faint patella, trabecular texture. The Kellgren-Lawrence grade shapes
what is drawn (Kellgren & Lawrence 1957, as §1 of the paper lists: JSN, osteophytes, sclerosis,
deformity):

| KL | medial joint space (x knee height) | osteophyte spurs            | sclerosis | deformity      |
|----|------------------------------------|-----------------------------|-----------|----------------|
| 0  | 0.075                              | none                        | no        | no             |
| 1  | 0.060                              | doubtful lip (half of them) | no        | no             |
| 2  | 0.046                              | 1-2 small                   | no        | no             |
| 3  | 0.031                              | 2-4 medium                  | yes       | no             |
| 4  | 0.013 (bone on bone)               | 4 large                     | heavy     | varus tilt,    |
|    |                                    |                             |           | flat condyle   |

and the lateral compartment narrows less. Every value is jittered (+-12%), the knee is rotated,
scaled and shifted, and contrast, exposure gradient, blur and noise vary, so that no single pixel
gives the grade away.

Layouts written under `root` (`write_phantom_dataset`):

- `layout="folders"`: `root/kneeKL224/{train,val,test,auto_test}/<KL 0-4>/<ID><R|L>.png`, 224 x 224
  8-bit gray knee crops (the kneeKL224 archive of Chen et al. 2019). Subjects are split 63/7/30;
  `auto_test` holds the test knees again, re-cropped with a larger position jitter, as an automatic
  detector would. macOS `._*` companions and a `.DS_Store` are left in as real archives have them.
- `layout="oai"`: `root/OAI/kXR_SQ_BU00.txt` (pipe-delimited, `ID|SIDE|READPRJ|VERSION|V00XRKL|
  V00XRJSM|V00XRJSL`, CRLF line ends, SIDE as `1`/`2` or `1: Right`/`2: Left`, a READPRJ 37 re-read
  for some knees, a few blank `V00XRKL`) and `root/OAI/images/<ID>.png` (16-bit) or `<ID>.dcm`
  (every fourth subject, some MONOCHROME1): one bilateral PA image per participant, 240 x 336.
  Convention (the usual display of a PA film): the LEFT half of the image is the patient's RIGHT
  knee, the right half the LEFT knee, each with its medial side towards the image centre and the
  fibula on the outside.
- `layout="most"`: the MOST release, `root/MOST/mostv01235xray.csv` (the CSV export of the
  SAS reading file: `MOSTID`, `V{0,1,2,3,5}X{L,R}KL` with the follow-ups mostly blank and a few
  baseline knees blank), `root/MOST/MOST_names.csv` (one film path per line, no header) and the
  films `root/MOST/<MOSTID>_<5-char suffix>/V<visit>/<view>/<film>.dcm`: a bilateral baseline
  `PA10` film per subject, except every sixth subject, whose only PA film is `PA05` (left out by
  the reader, as the paper keeps PA10 only); some subjects also have a `V1` PA10 film (a
  follow-up the baseline reading does not grade). MOSTIDs are `MB`/`MI` and five digits.
- `layout="oai+most"`: both releases, side by side (the paper's training data).
- `layout="both"`: the kneeKL224 folders and the OAI layout under one root (reading that root
  needs `--layout`: two data sets are never mixed silently).

Ground truth, outside the real layouts: `root/_phantom_truth/index.csv` with one row per lesion
region (`image` path relative to root, `side` R/L, `kl`, `kind` in `joint_space`, `osteophyte`,
`sclerosis`, `mask` path relative to root, `x0,y0,x1,y1` box in image pixels (end exclusive),
`jsw_medial_px`, `jsw_lateral_px` measured on the drawn bones) and the binary mask PNGs (image size,
255 inside) under `root/_phantom_truth/masks/`. The `joint_space` mask is the gap between femoral
condyles and tibial plateau in both compartments.

Reference:
    Górriz et al., MIDL 2019, §1 and §3.4 (bilateral PA radiographs split in the middle);
    Kellgren & Lawrence, Ann. Rheum. Dis. 16:494 (1957); OAI kXR_SQ_BU00 file layout.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from common import phantoms
from common.fileio import atomic_write_bytes
from common.progress import progress

LAYOUTS = ("folders", "oai", "most", "oai+most", "both")
TRUTH_DIR = "_phantom_truth"
FOLDERS_DIR = "kneeKL224"
OAI_DIR = "OAI"
KL_FILE_NAME = "kXR_SQ_BU00.txt"
KL_FILE_COLUMNS = ("ID", "SIDE", "READPRJ", "VERSION", "V00XRKL", "V00XRJSM", "V00XRJSL")
MOST_DIR = "MOST"
MOST_READING_FILE = "mostv01235xray.csv"  # the reading file's CSV export (pandas writes no SAS)
MOST_LIST_FILE = "MOST_names.csv"
MOST_VISIT_CODES = (0, 1, 2, 3, 5)
FOLDER_KNEE_HW = (224, 224)
OAI_KNEE_HW = (240, 168)
TRUTH_COLUMNS = (
    "image",
    "side",
    "kl",
    "kind",
    "mask",
    "x0",
    "y0",
    "x1",
    "y1",
    "jsw_medial_px",
    "jsw_lateral_px",
)

# Fractions of knee height (joint space) and width (spurs) per KL grade 0..4.
JSW_MEDIAL = (0.075, 0.060, 0.046, 0.031, 0.013)
JSW_LATERAL = (0.078, 0.072, 0.064, 0.055, 0.045)
SPUR_LENGTH = (0.022, 0.022, 0.045, 0.068, 0.095)
SPUR_COUNT = ((0, 0), (0, 1), (1, 2), (2, 4), (4, 4))
SCLEROSIS_DEPTH = (0.0, 0.0, 0.0, 0.025, 0.035)
SCLEROSIS_GAIN = (0.0, 0.0, 0.0, 0.2, 0.28)
KL_PROBABILITIES = (0.30, 0.20, 0.22, 0.17, 0.11)
_PROGRESS_MIN_FILES = 200


# --------------------------------------------------------------------------- one knee


def sample_kl_pair(rng):
    """Draws (KL right, KL left) for one participant: the two knees agree half of the time."""
    right = int(rng.choice(5, p=KL_PROBABILITIES))
    left = right if rng.random() < 0.5 else int(rng.choice(5, p=KL_PROBABILITIES))
    return right, left


def render_knee(shape_hw, kl, rng, *, mirror=False):
    """Draws one knee radiograph of KL grade `kl` (no noise yet; see `finish_radiograph`).

    The knee is a right knee as displayed on a PA film (fibula on the image left, medial side on
    the image right); `mirror=True` gives a left knee.

    Args:
        shape_hw: `(height, width)` of the knee image in pixels.
        kl: Kellgren-Lawrence grade 0..4.
        rng: a `numpy.random.Generator`.
        mirror: draw a left knee (mirror image).

    Returns:
        `(image, masks, info)`: float32 `(H, W)` in [0, 1]; dict kind -> bool `(H, W)` for
        `joint_space`, `osteophyte`, `sclerosis` (empty where the grade has none); dict with
        `jsw_medial_px`, `jsw_lateral_px` (mean gap over each compartment, pixels), `spurs`
        (count), `varus_deg`, and `bone` (bool mask of femur, tibia and fibula).
    """
    kl = int(kl)
    if not 0 <= kl <= 4:
        raise ValueError(f"kl must be in 0..4, got {kl}")
    height, width = (int(v) for v in shape_hw)
    u = rng.uniform
    xc = width * (0.5 + u(-0.03, 0.03))
    yj = height * (0.5 + u(-0.04, 0.04))
    hw = width * u(0.33, 0.37)  # half the bone width at the joint line
    gap_m = height * JSW_MEDIAL[kl] * u(0.88, 1.12)
    gap_l = height * JSW_LATERAL[kl] * u(0.88, 1.12)
    cond_a = hw * 0.5
    cond_b = height * u(0.075, 0.09)

    femur = phantoms.blank((height, width))
    tibia = phantoms.blank((height, width))
    fibula = phantoms.blank((height, width))
    spurs = phantoms.blank((height, width))
    medial_condyle = phantoms.blank((height, width))

    # Femur: shaft, metaphyseal flare with the intercondylar notch, two condyles.
    phantoms.draw_capsule(femur, (xc + u(-2, 2), -0.3 * height), (xc, yj - 0.3 * height), hw * 0.55)
    flare = [
        (xc - hw * 0.55, yj - 0.34 * height),
        (xc + hw * 0.55, yj - 0.34 * height),
        (xc + hw * 0.97, yj - 0.11 * height),
        (xc + hw * 0.12, yj - 0.13 * height),
        (xc, yj - 0.16 * height),
        (xc - hw * 0.12, yj - 0.13 * height),
        (xc - hw * 0.97, yj - 0.11 * height),
    ]
    phantoms.draw_polygon(femur, flare, 1.0)
    lat_cx, med_cx = xc - cond_a, xc + cond_a
    phantoms.draw_ellipse(femur, (lat_cx, yj - gap_l / 2 - cond_b), (cond_a, cond_b), 0.0, 1.0)
    med_a, med_b = (cond_a * 1.06, cond_b * 0.85) if kl == 4 else (cond_a, cond_b)
    med_center = (med_cx, yj - gap_m / 2 - med_b)
    phantoms.draw_ellipse(femur, med_center, (med_a, med_b), 0.0, 1.0)
    phantoms.draw_ellipse(medial_condyle, med_center, (med_a, med_b), 0.0, 1.0)

    # Tibia: plateau (two compartments, spines in the middle), metaphysis, shaft.
    top_l, top_m = yj + gap_l / 2, yj + gap_m / 2
    plateau = [
        (xc - hw * 1.0, top_l + 0.012 * height),
        (xc - hw * 0.9, top_l),
        (xc - hw * 0.16, top_l),
        (xc - hw * 0.07, yj - 0.03 * height),
        (xc, yj + 0.005 * height),
        (xc + hw * 0.07, yj - 0.035 * height),
        (xc + hw * 0.16, top_m),
        (xc + hw * 0.9, top_m),
        (xc + hw * 1.0, top_m + 0.012 * height),
        (xc + hw * 0.95, yj + 0.13 * height),
        (xc + hw * 0.55, yj + 0.27 * height),
        (xc + hw * 0.55, yj + 0.3 * height),
        (xc - hw * 0.55, yj + 0.3 * height),
        (xc - hw * 0.55, yj + 0.27 * height),
        (xc - hw * 0.95, yj + 0.13 * height),
    ]
    phantoms.draw_polygon(tibia, plateau, 1.0)
    phantoms.draw_capsule(tibia, (xc, yj + 0.25 * height), (xc, 1.4 * height), hw * 0.55)
    phantoms.draw_ellipse(
        fibula, (xc - hw * 0.95, yj + 0.15 * height), (0.085 * width, 0.05 * height)
    )
    phantoms.draw_capsule(
        fibula, (xc - hw * 0.97, yj + 0.17 * height), (xc - hw * 0.9, 1.3 * height), 0.035 * width
    )

    # Osteophytes: spurs at the joint margins (medial tibial first, the commonest site).
    sites = [
        ("tibia", +1, top_m + 0.004 * height),
        ("femur", +1, yj - gap_m / 2 - 0.025 * height),
        ("tibia", -1, top_l + 0.004 * height),
        ("femur", -1, yj - gap_l / 2 - 0.025 * height),
    ]
    low, high = SPUR_COUNT[kl]
    count = int(rng.integers(low, high + 1))
    if kl == 1:
        count = int(rng.random() < 0.5)
    for bone, direction, y in sites[:count]:
        length = width * SPUR_LENGTH[kl] * u(0.8, 1.2)
        base = height * u(0.035, 0.05)
        x_edge = xc + direction * hw * 0.97
        towards_joint = -1 if bone == "tibia" else +1
        spur = [
            (x_edge - direction * 2, y - base / 2),
            (x_edge + direction * length, y + towards_joint * base * 0.25),
            (x_edge - direction * 2, y + base / 2),
        ]
        phantoms.draw_polygon(spurs, spur, 1.0)
        phantoms.draw_polygon(femur if bone == "femur" else tibia, spur, 1.0)

    # Deformity (KL 4): varus tilt of the tibia about the medial margin and a lateral shift.
    varus = 0.0
    if kl == 4:
        varus = u(3.0, 6.0)
        matrix = cv2.getRotationMatrix2D((xc + hw * 0.9, top_m), varus, 1.0)
        matrix[0, 2] += u(0.01, 0.03) * width
        warp = {"dsize": (width, height), "flags": cv2.INTER_LINEAR, "borderValue": 0}
        tibial_spurs = cv2.warpAffine(spurs * (tibia > 0.5), matrix, **warp)
        spurs = np.maximum(spurs * (femur > 0.5), tibial_spurs)
        tibia = cv2.warpAffine(tibia, matrix, **warp)
        fibula = cv2.warpAffine(fibula, matrix, **warp)

    # Joint space: between the femur's lowest and the tibia's highest bone pixel, per column.
    split_row = int(yj)
    above = femur[:split_row] > 0.5
    below = tibia[split_row:] > 0.5
    femur_bottom = split_row - np.argmax(above[::-1], axis=0)  # one past the lowest femur pixel
    tibia_top = split_row + np.argmax(below, axis=0)
    both = above.any(axis=0) & below.any(axis=0)
    rows = np.arange(height)[:, None]
    joint_space = np.zeros((height, width), dtype=bool)
    widths = {}
    for name, center in (("lateral", lat_cx), ("medial", med_cx)):
        cols = np.arange(width)
        inside = both & (np.abs(cols - center) <= cond_a * 0.6)
        gaps = np.clip(tibia_top - femur_bottom, 0, None)[inside]
        joint_space |= inside[None, :] & (rows >= femur_bottom) & (rows < tibia_top)
        widths[name] = float(gaps.mean()) if gaps.size else 0.0

    # Subchondral sclerosis (KL >= 3): a brighter band on both sides of the medial compartment.
    sclerosis = np.zeros((height, width), dtype=np.float32)
    if SCLEROSIS_DEPTH[kl] > 0:
        depth = height * SCLEROSIS_DEPTH[kl] * u(0.85, 1.15)
        ys = np.arange(height, dtype=np.float32)[:, None]
        bone_top = np.argmax(tibia > 0.5, axis=0).astype(np.float32)[None, :]
        has_tibia = (tibia > 0.5).any(axis=0)[None, :]
        cols = np.arange(width)[None, :]
        medial_cols = (cols > xc + hw * 0.16) & (cols < xc + hw * 0.95)
        tib_band = (ys >= bone_top) & (ys < bone_top + depth) & has_tibia & medial_cols
        fem_bottom = (height - 1 - np.argmax(medial_condyle[::-1] > 0.5, axis=0)).astype(np.float32)
        fem_band = (ys <= fem_bottom[None, :]) & (ys > fem_bottom[None, :] - depth) & medial_cols
        fem_band &= medial_condyle > 0.5
        sclerosis = ((tib_band & (tibia > 0.5)) | fem_band).astype(np.float32)
        sclerosis = phantoms.blur(sclerosis, 1.0) * (np.maximum(femur, tibia) > 0.5)

    # Compose the radiograph.
    soft = phantoms.blank((height, width))
    phantoms.draw_ellipse(soft, (xc + u(-3, 3), yj), (width * u(0.55, 0.7), height * 0.95))
    patella = phantoms.blank((height, width))
    phantoms.draw_ellipse(
        patella, (xc + u(-0.05, 0.05) * width, yj - 0.17 * height), (0.2 * width, 0.11 * height)
    )
    bone = np.maximum(femur, tibia)
    tissue = u(0.16, 0.24)
    bone_level = u(0.55, 0.65)
    img = 0.04 + tissue * soft
    img = img + (bone_level - img) * bone
    img = img + 0.7 * (bone_level - img) * fibula * (1.0 - bone)
    img = img + 0.06 * patella * bone
    img = img + 0.03 * phantoms.smooth_noise((height, width), 1.5, rng) * bone
    img = img + 0.02 * phantoms.smooth_noise((height, width), 8.0, rng) * soft
    img = img + SCLEROSIS_GAIN[kl] * u(0.85, 1.15) * sclerosis
    img = phantoms.blur(phantoms.clip01(img), u(0.5, 0.9))

    masks = (joint_space, spurs > 0.5, sclerosis > 0.25, np.maximum(bone, fibula) > 0.5)
    img, masks = _jitter_position(img, masks, rng, 4.0, (0.04 * width, 0.04 * height), (0.94, 1.06))
    if mirror:
        img = img[:, ::-1].copy()
        masks = tuple(m[:, ::-1].copy() for m in masks)
    *masks, bone_mask = masks
    info = {
        "bone": bone_mask,
        "jsw_medial_px": widths["medial"],
        "jsw_lateral_px": widths["lateral"],
        "spurs": count,
        "varus_deg": varus,
    }
    return img, dict(zip(("joint_space", "osteophyte", "sclerosis"), masks)), info


def _jitter_position(img, masks, rng, max_rotation_deg, max_shift_px, scale_range):
    """Random rotation/scale about the centre and shift; the film's edge is reflected, not black."""
    height, width = img.shape
    angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
    scale = rng.uniform(*scale_range)
    shift = np.broadcast_to(np.asarray(max_shift_px, dtype=np.float64), (2,))
    tx, ty = rng.uniform(-shift, shift)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, scale)
    matrix[:, 2] += (tx, ty)
    size = (width, height)
    out = cv2.warpAffine(img, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    moved = tuple(
        cv2.warpAffine(m.astype(np.uint8), matrix, size, flags=cv2.INTER_NEAREST) > 0 for m in masks
    )
    return out.astype(np.float32), moved


def finish_radiograph(img, rng):
    """Adds the acquisition's variation: contrast, an exposure gradient and noise.

    Args:
        img: float32 `(H, W)` in [0, 1] (one knee or a bilateral film).
        rng: a `numpy.random.Generator`.

    Returns:
        A new float32 image in [0, 1].
    """
    img = phantoms.adjust_contrast(img, rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05))
    gradient = phantoms.smooth_noise(img.shape, max(img.shape) / 3.0, rng)
    img = phantoms.clip01(img + 0.04 * gradient)
    return phantoms.add_noise(img, rng.uniform(0.01, 0.03), rng)


# --------------------------------------------------------------------------- writers


def write_phantom_dataset(root, *, num_subjects=400, seed=0, layout="oai"):
    """Writes phantom knee radiographs in the kneeKL224, OAI and/or MOST layout (module docstring).

    Args:
        root: output folder (created). `root/kneeKL224/`, `root/OAI/` and/or `root/MOST/` are
            written, plus `root/_phantom_truth/`.
        num_subjects: participants; each has two knees (so 2 x num_subjects knee images in each
            layout). The default of 400 is what the `demo` preset trains on.
        seed: random seed; the same seed writes the same files.
        layout: `"oai"` (default), `"folders"`, `"most"`, `"oai+most"` or `"both"` (folders and
            OAI).

    Returns:
        `pathlib.Path` of `root`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout '{layout}'. Available: {list(LAYOUTS)}")
    num_subjects = int(num_subjects)
    if num_subjects < 2:
        raise ValueError(f"num_subjects must be at least 2, got {num_subjects}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = phantoms.rng(seed)
    ids = 9000000 + rng.choice(999999, size=num_subjects, replace=False)
    ids = [str(int(i)) for i in sorted(ids)]
    subject_kl = [sample_kl_pair(rng) for _ in ids]
    truth = []
    if layout in ("folders", "both"):
        truth += _write_folders(root, ids, subject_kl, phantoms.rng([seed, 1]))
    if layout in ("oai", "both", "oai+most"):
        truth += _write_oai(root, ids, subject_kl, phantoms.rng([seed, 2]))
    if layout in ("most", "oai+most"):
        truth += _write_most(root, num_subjects, phantoms.rng([seed, 3]))
    _write_csv(root / TRUTH_DIR / "index.csv", TRUTH_COLUMNS, truth)
    return root


def _progress(total, desc):
    return progress(total=total, desc=desc, unit="files", enabled=total >= _PROGRESS_MIN_FILES)


def _truth_rows(root, image_path, side, kl, masks, info, offset_x=0, full_shape=None):
    rows = []
    rel_image = image_path.relative_to(root).as_posix()
    stem = rel_image.replace("/", "_").rsplit(".", 1)[0]
    for kind, mask in masks.items():
        if not mask.any():
            continue
        if full_shape is not None:
            canvas = np.zeros(full_shape, dtype=bool)
            canvas[:, offset_x : offset_x + mask.shape[1]] = mask
            mask = canvas
        mask_path = root / TRUTH_DIR / "masks" / f"{stem}_{side}_{kind}.png"
        phantoms.write_png(mask_path, mask.astype(np.float32))
        x0, y0, x1, y1 = phantoms.mask_bbox(mask)
        rows.append(
            {
                "image": rel_image,
                "side": side,
                "kl": kl,
                "kind": kind,
                "mask": mask_path.relative_to(root).as_posix(),
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "jsw_medial_px": f"{info['jsw_medial_px']:.2f}",
                "jsw_lateral_px": f"{info['jsw_lateral_px']:.2f}",
            }
        )
    return rows


def _write_folders(root, ids, subject_kl, rng):
    base = root / FOLDERS_DIR
    order = rng.permutation(len(ids))
    n_test = max(1, int(round(0.3 * len(ids))))
    n_val = max(1, int(round(0.07 * len(ids))))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[index] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    truth = []
    total = 2 * len(ids) + 2 * n_test
    with _progress(total, "kneeKL224 phantoms") as bar:
        for index, (pid, kls) in enumerate(zip(ids, subject_kl)):
            for side, kl in zip(("R", "L"), kls):
                img, masks, info = render_knee(FOLDER_KNEE_HW, kl, rng, mirror=side == "L")
                split = split_of[index]
                path = base / split / str(kl) / f"{pid}{side}.png"
                phantoms.write_png(path, finish_radiograph(img, rng))
                truth += _truth_rows(root, path, side, kl, masks, info)
                bar.update()
                if split == "test":
                    # auto_test: the same knee as an automatic detector crops it (shifted, zoomed).
                    moved, moved_masks = _jitter_position(
                        img, masks.values(), rng, 3.0, 0.08 * FOLDER_KNEE_HW[1], (0.9, 1.1)
                    )
                    path = base / "auto_test" / str(kl) / f"{pid}{side}.png"
                    phantoms.write_png(path, finish_radiograph(moved, rng))
                    truth += _truth_rows(root, path, side, kl, dict(zip(masks, moved_masks)), info)
                    bar.update()
    # Junk that real archives carry: macOS AppleDouble companions and Finder metadata.
    first = next(iter(sorted((base / "train").glob("*/*.png"))), None)
    if first is not None:
        atomic_write_bytes(first.with_name(f"._{first.name}"), b"\x00\x05\x16\x07" + bytes(60))
    atomic_write_bytes(base / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(32))
    return truth


def _write_oai(root, ids, subject_kl, rng):
    base = root / OAI_DIR
    images = base / "images"
    knee_h, knee_w = OAI_KNEE_HW
    full_shape = (knee_h, 2 * knee_w)
    truth = []
    rows = []
    with _progress(len(ids), "OAI phantoms") as bar:
        for index, (pid, (kl_right, kl_left)) in enumerate(zip(ids, subject_kl)):
            right, right_masks, right_info = render_knee(OAI_KNEE_HW, kl_right, rng)
            left, left_masks, left_info = render_knee(OAI_KNEE_HW, kl_left, rng, mirror=True)
            # PA film: the patient's right knee on the image's left half.
            film = finish_radiograph(np.concatenate([right, left], axis=1), rng)
            if index % 4 == 3:
                path = phantoms.write_dicom(
                    images / f"{pid}.dcm",
                    film,
                    monochrome1=index % 8 == 7,
                    bits=12,
                    patient_id=pid,
                )
            else:
                path = phantoms.write_png(images / f"{pid}.png", film, bits=16)
            for side, kl, masks, info, offset in (
                ("R", kl_right, right_masks, right_info, 0),
                ("L", kl_left, left_masks, left_info, knee_w),
            ):
                missing = rng.random() < 0.03
                truth += (
                    []
                    if missing
                    else _truth_rows(
                        root, path, side, kl, masks, info, offset_x=offset, full_shape=full_shape
                    )
                )
                rows.append(_kl_row(pid, side, 15, "" if missing else kl, rng))
                if rng.random() < 0.2:
                    reread = int(np.clip(kl + rng.integers(-1, 2), 0, 4))
                    rows.append(_kl_row(pid, side, 37, reread, rng))
            bar.update()
    first = next(iter(sorted(images.glob("*.png"))), None)
    if first is not None:
        atomic_write_bytes(images / f"._{first.name}", b"\x00\x05\x16\x07" + bytes(60))
    text = io.StringIO()
    writer = csv.writer(text, delimiter="|", lineterminator="\r\n")
    writer.writerow(KL_FILE_COLUMNS)
    for row in rows:
        writer.writerow(row)
    atomic_write_bytes(base / KL_FILE_NAME, text.getvalue().encode("ascii"))
    return truth


def _write_most(root, num_subjects, rng):
    base = root / MOST_DIR
    knee_h, knee_w = OAI_KNEE_HW
    full_shape = (knee_h, 2 * knee_w)
    numbers = rng.choice(99999, size=num_subjects, replace=False) + 1
    ids = sorted(f"{'MB' if i % 2 else 'MI'}{n:05d}" for i, n in enumerate(numbers))
    columns = ["MOSTID"] + [f"V{v}X{s}KL" for v in MOST_VISIT_CODES for s in ("L", "R")]
    readings, listed, truth = [], [], []
    with _progress(num_subjects, "MOST phantoms") as bar:
        for index, pid in enumerate(ids):
            kl_right, kl_left = sample_kl_pair(rng)
            right, right_masks, right_info = render_knee(OAI_KNEE_HW, kl_right, rng)
            left, left_masks, left_info = render_knee(OAI_KNEE_HW, kl_left, rng, mirror=True)
            film = finish_radiograph(np.concatenate([right, left], axis=1), rng)
            subject = f"{pid}_{rng.integers(10000):04d}"[: len(pid) + 5]
            view = "PA05" if index % 6 == 5 else "PA10"
            rel = f"{subject}/V0/{view}/{index + 1:06d}.dcm"
            path = phantoms.write_dicom(
                base / rel, film, monochrome1=index % 3 == 0, bits=12, patient_id=pid
            )
            listed.append(rel)
            row = {c: "" for c in columns}
            row["MOSTID"] = pid
            for side, kl, masks, info, offset in (
                ("R", kl_right, right_masks, right_info, 0),
                ("L", kl_left, left_masks, left_info, knee_w),
            ):
                missing = rng.random() < 0.03
                row[f"V0X{side}KL"] = "" if missing else str(kl)
                if not missing and view == "PA10":
                    truth += _truth_rows(
                        root, path, side, kl, masks, info, offset_x=offset, full_shape=full_shape
                    )
            if index % 4 == 1:  # a 15-month follow-up film, graded in V1 only
                follow = f"{subject}/V1/PA10/{index + 1:06d}.dcm"
                phantoms.write_dicom(base / follow, film, bits=12, patient_id=pid)
                listed.append(follow)
                row["V1XRKL"], row["V1XLKL"] = str(kl_right), str(kl_left)
            readings.append(row)
            bar.update()
    _write_csv(base / MOST_READING_FILE, columns, readings)
    atomic_write_bytes(base / MOST_LIST_FILE, ("\n".join(listed) + "\n").encode("ascii"))
    return truth


def _kl_row(pid, side, readprj, kl, rng):
    code = 1 if side == "R" else 2
    side_text = f"{code}: {'Right' if code == 1 else 'Left'}" if rng.random() < 0.3 else str(code)
    jsm = "" if kl == "" else str(min(int(kl), 3) if kl != 1 else int(rng.random() < 0.3))
    jsl = "" if kl == "" else str(max(int(kl) - 2, 0))
    return (pid, side_text, str(readprj), "1.6", str(kl), jsm, jsl)


def _write_csv(path, columns, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))
