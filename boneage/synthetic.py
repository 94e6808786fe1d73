"""Phantom hand radiographs in the Kaggle layout of the RSNA 2017 bone-age set, maturing with age and sex.

Each phantom is a left hand, PA view (thumb on the image's right), drawn with `common.phantoms`:
soft tissue of the forearm, palm and fingers; the radius and ulna; eight carpal bones; five
metacarpals; the phalanges. Its visible skeletal maturity follows the subject's bone age and sex
the way the Greulich and Pyle atlas describes it:

- carpal bones appear one by one (capitate and hamate in the first months, triquetrum ~2.5 years,
  lunate ~3.5, trapezium ~5, trapezoid and scaphoid ~5.5, pisiform ~11 in boys) and then grow;
- the epiphyses of the phalanges, metacarpals, radius and ulna appear (1.5-6 years), widen to the
  width of their metaphyses, and then fuse with them (the growth-plate gap closes, 14-17 years);
- the bones lengthen (the whole hand grows about the wrist) and the cartilage gaps narrow;
- girls mature earlier: a girl's skeletal maturity is her bone age times 228/204 (boys' and girls'
  skeletons are mature at about 19 and 17 years), so at the same age a girl shows more.

Position, rotation, scale, width, contrast, brightness and noise are jittered per image, and an
"L" side marker sits in a corner of some images.

Written layout (the Kaggle "rsna-bone-age" archive):

    boneage-training-dataset.csv                      id,boneage,male  (male True/False)
    boneage-training-dataset/boneage-training-dataset/<id>.png
    boneage-test-dataset.csv                          Case ID,Sex      (Sex M/F, no ages)
    boneage-test-dataset/boneage-test-dataset/<id>.png
    _phantom_truth/index.csv                          image,kind,mask,x0,y0,x1,y1
    _phantom_truth/subjects.csv                       per-image truth (age, sex, drawn features)
    _phantom_truth/masks/<id>_hand.png, <id>_carpals.png

`_phantom_truth/` is not part of the real layout; readers ignore it.

Reference:
    Paper 003 §IV (the RSNA 2017 data set: 12,611 training images, mean age 127 months);
    W. W. Greulich, S. I. Pyle, Radiographic Atlas of Skeletal Development of the Hand and Wrist.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common import phantoms
from common.fileio import atomic_write_text
from common.fileio import csv_text

TRAIN_CSV = "boneage-training-dataset.csv"
TEST_CSV = "boneage-test-dataset.csv"
TRAIN_DIR = "boneage-training-dataset"
TEST_DIR = "boneage-test-dataset"
TRUTH_DIR = "_phantom_truth"

ADULT_MATURITY_MONTHS = 228.0  # boys' skeleton mature at ~19 years
GIRL_MATURITY_FACTOR = 228.0 / 204.0  # girls' at ~17 years
MEAN_AGE_MONTHS = 127.0  # RSNA training set, paper §IV
SD_AGE_MONTHS = 41.0
MALE_FRACTION = 0.54

# Carpal bones: name, adult centre (dx, dy) from the wrist anchor, semi-axes, angle, the boy-scale
# maturity in months at which the ossification centre appears.
_CARPALS = (
    ("capitate", (2.0, -20.0), (7.0, 10.0), 0.0, 3.0),
    ("hamate", (-10.5, -17.0), (6.5, 8.5), 10.0, 4.0),
    ("triquetrum", (-15.5, -4.0), (5.5, 5.0), 0.0, 30.0),
    ("lunate", (1.0, -3.0), (6.0, 5.5), 0.0, 42.0),
    ("trapezium", (19.5, -16.0), (6.0, 6.0), 20.0, 60.0),
    ("trapezoid", (12.0, -19.0), (4.5, 6.0), 0.0, 66.0),
    ("scaphoid", (13.5, -3.0), (7.5, 5.0), 30.0, 66.0),
    ("pisiform", (-19.0, -7.5), (3.5, 3.5), 0.0, 132.0),
)

# Rays (thumb, index, middle, ring, little): metacarpal base and head (adult, from the anchor),
# then the phalanx lengths (proximal, middle, distal; 0 = absent) and shaft radii.
_RAYS = (
    ((26.0, -24.0), (42.0, -54.0), (22.0, 0.0, 16.0), (4.6, 3.6, 0.0, 3.0)),
    ((12.0, -30.0), (20.0, -88.0), (30.0, 19.0, 14.0), (4.2, 3.4, 2.8, 2.3)),
    ((1.0, -32.0), (3.0, -90.0), (34.0, 22.0, 15.0), (4.3, 3.5, 2.9, 2.4)),
    ((-9.0, -30.0), (-13.0, -84.0), (31.0, 20.0, 15.0), (3.8, 3.3, 2.8, 2.3)),
    ((-18.0, -27.0), (-27.0, -76.0), (24.0, 14.0, 12.0), (3.6, 3.0, 2.5, 2.1)),
)
_SPLAY = (0.12, 0.04, 0.0, -0.05, -0.10)  # extra finger angle (radians) beyond the metacarpal axis

# Epiphyses (boy-scale months): appearance, full width reached, fusion start.
_EPIPHYSIS_TIMING = {
    "metacarpal": (24.0, 110.0, 180.0),
    "proximal": (18.0, 100.0, 178.0),
    "middle": (28.0, 110.0, 176.0),
    "distal": (22.0, 105.0, 168.0),
    "radius": (12.0, 110.0, 198.0),
    "ulna": (72.0, 140.0, 194.0),
}
_FUSION_MONTHS = 16.0  # a growth plate closes over this span of maturity


def skeletal_maturity_months(age_months, male) -> float:
    """Returns the boy-equivalent maturity (months, 0..228) that a phantom of this age and sex shows.

    Args:
        age_months: bone age in months (>= 0).
        male: True/1 for a boy, False/0 for a girl (girls mature 228/204 times faster).

    Returns:
        float in [0, 228].
    """
    factor = 1.0 if bool(male) else GIRL_MATURITY_FACTOR
    return float(min(ADULT_MATURITY_MONTHS, max(0.0, float(age_months) * factor)))


def bone_length_scale(maturity_months) -> float:
    """Returns the hand's drawn size relative to an adult's (0.58 at birth, 1.0 when mature).

    Real hands grow more (about 0.4 to 1), but radiographs are collimated to the hand, so a
    child's hand fills more of the film than its size alone would make it.

    Args:
        maturity_months: boy-scale maturity in months.

    Returns:
        float in [0.58, 1].
    """
    g = min(1.0, max(0.0, maturity_months) / 200.0) ** 0.8
    return 0.58 + 0.42 * g


def _ramp(x, start, end):
    if end <= start:
        return float(x >= start)
    return float(min(1.0, max(0.0, (x - start) / (end - start))))


def _epiphysis_state(kind, maturity):
    """Returns (present, width fraction 0..1, fusion 0..1) of an epiphysis kind at a maturity."""
    appear, full, fuse = _EPIPHYSIS_TIMING[kind]
    if maturity < appear:
        return False, 0.0, 0.0
    width = 0.35 + 0.65 * _ramp(maturity, appear, full)
    return True, width, _ramp(maturity, fuse, fuse + _FUSION_MONTHS)


class _Canvas:
    """Three layers drawn together: soft tissue, bone, and the carpal-bone mask."""

    def __init__(self, shape_hw, anchor_xy, scale):
        self.soft = phantoms.blank(shape_hw)
        self.bone = phantoms.blank(shape_hw)
        self.carpals = phantoms.blank(shape_hw)
        self.anchor = np.asarray(anchor_xy, dtype=np.float64)
        self.scale = float(scale)
        self.info = {"carpals_visible": 0, "epiphyses_visible": 0, "epiphyses_fused": 0}

    def at(self, offset_xy):
        return self.anchor + self.scale * np.asarray(offset_xy, dtype=np.float64)

    def long_bone(self, p0, p1, radius, *, epiphysis=None, at_start=True, gap=2.2):
        """A shaft from p0 (proximal) to p1 (distal) with an optional epiphysis at one end."""
        p0 = np.asarray(p0, dtype=np.float64)
        p1 = np.asarray(p1, dtype=np.float64)
        axis = p1 - p0
        length = float(np.hypot(*axis))
        direction = axis / max(length, 1e-6)
        thick = 0.95 * radius
        cap = thick + gap * self.scale  # the cartilage end: the epiphysis and its growth plate
        start, end = (p0 + direction * cap, p1) if at_start else (p0, p1 - direction * cap)
        phantoms.draw_capsule(self.bone, start, end, radius, value=1.0, mode="max")
        inner = 0.45 * radius
        if inner > 0.6 and length > 2 * cap:
            phantoms.draw_capsule(self.bone, start, end, inner, value=0.8, mode="set")
        if epiphysis is None:
            return
        present, width, fusion = epiphysis
        if not present:
            return
        self.info["epiphyses_visible"] += 1
        self.info["epiphyses_fused"] += int(fusion >= 1.0)
        end_point = p0 if at_start else p1
        inward = direction if at_start else -direction
        center = end_point + inward * (thick / 2.0)
        normal = np.array([-direction[1], direction[0]])
        angle = math.degrees(math.atan2(normal[1], normal[0]))
        axes = (max(0.8, width * radius * 1.05), max(0.8, thick / 2.0))
        phantoms.draw_ellipse(self.bone, center, axes, angle_deg=angle, value=0.9, mode="max")
        if fusion > 0:
            # The growth plate closes: bone bridges the gap from the epiphysis to the metaphysis.
            plate = end_point + inward * (thick + gap * self.scale / 2.0)
            half = inward * (gap * self.scale / 2.0 + 0.6)
            bridge = max(0.6, fusion * width * radius)
            phantoms.draw_capsule(
                self.bone, plate - half, plate + half, bridge, value=0.9 * fusion, mode="max"
            )

    def soft_capsule(self, p0, p1, radius):
        phantoms.draw_capsule(self.soft, p0, p1, radius, value=1.0, mode="max")

    def soft_polygon(self, points):
        phantoms.draw_polygon(self.soft, np.asarray(points), value=1.0, mode="max")


def render_hand(age_months, male, rng, shape_hw=(256, 208)):
    """Draws one phantom hand radiograph and its hand and carpal masks.

    Args:
        age_months: bone age in months, >= 0.
        male: True for a boy, False for a girl.
        rng: a `numpy.random.Generator` (all jitter comes from it).
        shape_hw: image `(height, width)` in pixels.

    Returns:
        `(image, hand_mask, carpal_mask, info)`: float32 image in [0, 1], bool masks, and a dict of
        the drawn features (`maturity_months`, `length_scale`, `carpals_visible`,
        `epiphyses_visible`, `epiphyses_fused`).
    """
    height, width = (int(v) for v in shape_hw)
    maturity = skeletal_maturity_months(age_months, male)
    maturity = float(np.clip(maturity + rng.normal(0.0, 3.0), 0.0, ADULT_MATURITY_MONTHS))
    size = 1.12 * height / 256.0  # radiographs are collimated: the hand fills the film
    scale = bone_length_scale(maturity) * size
    anchor = (width / 2.0 - 4.0 * size, height * 0.86)
    c = _Canvas((height, width), anchor, scale)
    c.info["maturity_months"] = maturity
    c.info["length_scale"] = bone_length_scale(maturity)
    gap = 2.2 + 2.5 * (1.0 - _ramp(maturity, 0.0, ADULT_MATURITY_MONTHS))  # cartilage narrows

    # Forearm: radius (thumb side) and ulna, running off the bottom edge.
    bottom = height + 40.0
    radius_top = c.at((17.0, 6.0))
    ulna_top = c.at((-14.0, 9.0))
    c.long_bone(
        (radius_top[0] + 3 * size, bottom),
        radius_top,
        8.5 * c.scale,
        epiphysis=_epiphysis_state("radius", maturity),
        at_start=False,
        gap=gap,
    )
    c.long_bone(
        (ulna_top[0] - 2 * size, bottom),
        ulna_top,
        6.0 * c.scale,
        epiphysis=_epiphysis_state("ulna", maturity),
        at_start=False,
        gap=gap,
    )
    forearm_half = 30.0 * c.scale + 6.0 * size
    wrist = c.at((3.0, 8.0))
    c.soft_polygon(
        [
            (wrist[0] - forearm_half, wrist[1] - 4 * c.scale),
            (wrist[0] + forearm_half, wrist[1] - 4 * c.scale),
            (wrist[0] + forearm_half + 6 * size, bottom),
            (wrist[0] - forearm_half - 6 * size, bottom),
        ]
    )

    # Carpal bones: appear in order, then grow to their adult size.
    for _name, offset, axes, angle, appear in _CARPALS:
        if maturity < appear:
            continue
        growth = 0.25 + 0.75 * _ramp(maturity, appear, appear + 90.0) ** 0.8
        center = c.at(offset)
        semi = (axes[0] * c.scale * growth, axes[1] * c.scale * growth)
        phantoms.draw_ellipse(c.bone, center, semi, angle_deg=angle, value=0.95, mode="max")
        phantoms.draw_ellipse(c.carpals, center, semi, angle_deg=angle, value=1.0, mode="max")
        c.info["carpals_visible"] += 1

    # Palm soft tissue around the carpus and metacarpals.
    heads = [c.at(ray[1]) for ray in _RAYS]
    bases = [c.at(ray[0]) for ray in _RAYS]
    margin = 7.0 * c.scale + 3.0 * size
    c.soft_polygon(
        [
            (bases[4][0] - margin, wrist[1]),
            (heads[4][0] - margin, heads[4][1]),
            (heads[3][0], heads[3][1] - margin * 0.6),
            (heads[2][0], heads[2][1] - margin * 0.6),
            (heads[1][0] + margin, heads[1][1]),
            (bases[0][0] + margin, bases[0][1]),
            (wrist[0] + forearm_half, wrist[1]),
        ]
    )

    # Rays: metacarpal, then phalanges along the finger, each with soft tissue around it.
    for ray_index, (base, head, lengths, radii) in enumerate(_RAYS):
        p0, p1 = c.at(base), c.at(head)
        axis = p1 - p0
        direction = axis / np.hypot(*axis)
        thumb = ray_index == 0
        mc_epiphysis = _epiphysis_state("metacarpal", maturity)
        c.long_bone(p0, p1, radii[0] * c.scale, epiphysis=mc_epiphysis, at_start=thumb, gap=gap)
        c.soft_capsule(p0, p1, radii[0] * c.scale + margin * 0.8)
        turn = _SPLAY[ray_index]
        rot = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
        finger = rot @ direction
        joint = p1 + finger * gap * c.scale
        tip = joint
        for phalanx, kind in enumerate(("proximal", "middle", "distal")):
            length = lengths[phalanx] * c.scale
            if length <= 0:
                continue
            radius = radii[phalanx + 1] * c.scale
            end = joint + finger * length
            c.long_bone(joint, end, radius, epiphysis=_epiphysis_state(kind, maturity), gap=gap)
            tip = end
            joint = end + finger * gap * c.scale
        c.soft_capsule(p1, tip + finger * 2.0 * c.scale, radii[1] * c.scale + 3.5 * size)

    hand = c.soft > 0.5
    # Tissue texture, then jitter the geometry of everything at once.
    tissue = c.soft * (0.26 + 0.03 * phantoms.smooth_noise((height, width), 12.0, rng))
    bone = c.bone * (0.48 + 0.04 * phantoms.smooth_noise((height, width), 4.0, rng))
    structure = np.clip(tissue + bone, 0.0, 1.0).astype(np.float32)
    structure, (hand_w, carpal_w) = phantoms.random_affine(
        structure,
        rng,
        max_rotation_deg=12.0,
        max_shift_px=(0.07 * width, 0.05 * height),
        scale_range=(0.9, 1.06),
        masks=(hand.astype(np.uint8), (c.carpals > 0.5).astype(np.uint8)),
    )
    background = rng.uniform(0.02, 0.12)
    image = background + structure * rng.uniform(0.85, 1.15)
    image = phantoms.blur(image, rng.uniform(0.4, 0.9))
    if rng.random() < 0.6:
        _draw_side_marker(image, rng)
    image = phantoms.adjust_contrast(image, rng.uniform(0.85, 1.2), rng.uniform(-0.03, 0.05))
    image = phantoms.add_noise(image, rng.uniform(0.005, 0.02), rng)
    return image, hand_w.astype(bool), carpal_w.astype(bool), c.info


def _draw_side_marker(image, rng):
    """A bright "L" marker in a top corner (lead letters on real cassettes)."""
    height, width = image.shape
    s = 0.05 * height
    x = rng.uniform(0.04, 0.1) * width
    if rng.random() < 0.5:
        x = width - x - s
    y = rng.uniform(0.03, 0.08) * height
    points = [
        (x, y),
        (x + 0.3 * s, y),
        (x + 0.3 * s, y + 0.7 * s),
        (x + 0.8 * s, y + 0.7 * s),
        (x + 0.8 * s, y + s),
        (x, y + s),
    ]
    phantoms.draw_polygon(image, points, value=0.95, mode="set")


# --------------------------------------------------------------------------- writer


def write_phantom_dataset(
    root, *, num_subjects=1200, seed=0, test_fraction=0.05, image_height=256
) -> Path:
    """Writes a phantom RSNA 2017 bone-age set in the Kaggle layout (module docstring) under `root`.

    Ages follow the RSNA training set (normal, mean 127 months, sd 41, clipped to 1..228, whole
    months); 54% are boys. Every image is drawn from its subject's seed, so a given `seed` always
    writes the same files.

    Args:
        root: output folder (created).
        num_subjects: images in all, one per subject (the test CSV gets `test_fraction` of them,
            at least one); >= 2.
        seed: random seed.
        test_fraction: share of subjects in `boneage-test-dataset.csv` (no ages there, as in the
            real archive; their truth is in `_phantom_truth/subjects.csv`).
        image_height: image height in pixels (widths vary around 0.8 of it).

    Returns:
        `root` as a `pathlib.Path`.
    """
    num_subjects = int(num_subjects)
    if num_subjects < 2:
        raise ValueError(f"num_subjects must be >= 2; received {num_subjects}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); received {test_fraction}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = phantoms.rng((int(seed), 7))
    num_test = max(1, int(round(num_subjects * float(test_fraction))))
    num_train = num_subjects - num_test
    # Kaggle ids start at 1377 with gaps; the test set's ids are a separate run (4360.. in the real set).
    train_ids = 1377 + np.cumsum(plan.integers(1, 4, size=num_train))
    test_ids = int(train_ids[-1]) + 1000 + np.arange(num_test)
    ages = np.clip(np.rint(plan.normal(MEAN_AGE_MONTHS, SD_AGE_MONTHS, num_subjects)), 1, 228)
    males = plan.random(num_subjects) < MALE_FRACTION
    widths = plan.integers(int(0.74 * image_height), int(0.84 * image_height) + 1, num_subjects)

    subjects, index_rows, train_rows, test_rows = [], [], [], []
    progress = None
    if num_subjects > 200:
        from common.progress import progress as _progress

        progress = _progress(total=num_subjects, desc="boneage phantoms", unit="img")
    try:
        for i in range(num_subjects):
            is_test = i >= num_train
            image_id = int(test_ids[i - num_train] if is_test else train_ids[i])
            folder = TEST_DIR if is_test else TRAIN_DIR
            rel_image = f"{folder}/{folder}/{image_id}.png"
            rng = phantoms.rng((int(seed), i, 11))
            image, hand, carpals, info = render_hand(
                ages[i], males[i], rng, (image_height, int(widths[i]))
            )
            phantoms.write_png(root / rel_image, image)
            for kind, mask in (("hand", hand), ("carpals", carpals)):
                if not mask.any():
                    continue
                rel_mask = f"{TRUTH_DIR}/masks/{image_id}_{kind}.png"
                phantoms.write_png(root / rel_mask, mask.astype(np.float32))
                index_rows.append([rel_image, kind, rel_mask, *phantoms.mask_bbox(mask)])
            age, male = int(ages[i]), bool(males[i])
            if is_test:
                test_rows.append([image_id, "M" if male else "F"])
            else:
                train_rows.append([image_id, age, "True" if male else "False"])
            subjects.append(
                [
                    image_id,
                    "test" if is_test else "train",
                    age,
                    int(male),
                    round(info["maturity_months"], 2),
                    round(info["length_scale"], 4),
                    info["carpals_visible"],
                    info["epiphyses_visible"],
                    info["epiphyses_fused"],
                    int(hand.sum()),
                ]
            )
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()

    atomic_write_text(root / TRAIN_CSV, csv_text(["id", "boneage", "male"], train_rows))
    atomic_write_text(root / TEST_CSV, csv_text(["Case ID", "Sex"], test_rows))
    atomic_write_text(
        root / TRUTH_DIR / "index.csv",
        csv_text(["image", "kind", "mask", "x0", "y0", "x1", "y1"], index_rows),
    )
    atomic_write_text(
        root / TRUTH_DIR / "subjects.csv",
        csv_text(
            [
                "id",
                "split",
                "age_months",
                "male",
                "maturity_months",
                "length_scale",
                "carpals_visible",
                "epiphyses_visible",
                "epiphyses_fused",
                "hand_pixels",
            ],
            subjects,
        ),
    )
    return root
