"""Phantom sagittal lumbar MRI series in the SPIDER layout, with gradings that follow the drawing.

Every subject is a lumbar spine from the sacrum to T12 drawn slice by slice (4 mm sagittal slices,
13 of them; a T2 SPACE series has 25 slices of 2 mm) with `common.phantoms` primitives, in the
physical frame of the reoriented series (`PIL`: rows toward inferior, columns toward posterior):

- vertebral bodies (L5 = mask label 1 ... T12 = 6; 106 when the field of view cuts T12; the sacrum
  is drawn but, like SPIDER's L5 = 1 numbering implies, not labelled) with a dark cortical rim and
  textured marrow, narrowing in depth toward the lateral slices (an elliptic body);
- the six discs L5/S1 (201) ... T12/L1 (206), tilted by a lordosis that varies per subject:
  disc HEIGHT follows `Disc narrowing` (normal 9.5-12 mm, narrowed 4.5-6.5 mm; narrowing is more
  likely in high grades), the disc's T2 signal follows `Pfirrman grade`: nucleus brightness
  (1 bright ... 5 black), grade 2's horizontal intranuclear band, the nucleus/annulus distinction
  (clear in 1-2, blurred in 3-4, none in 5);
- `UP endplate` / `LOW endplate` = 1: a notch of fluid-bright disc material, 9-12 mm wide and
  6-8 mm deep, into the vertebra above / below the disc (a Schmorl node) over 3-5 slices;
- `Modic` > 0: a band of changed marrow signal beside BOTH endplates of the disc (SPIDER has one
  Modic grade per disc): type 1 T2-bright/T1-dark, type 2 T2-bright/T1-bright, type 3 dark;
- the spinal canal (label 100, CSF bright on T2), posterior elements and fat, a smooth bias
  field, noise, and a random scanner gain (stored as int16, so intensities are not in [0, 1]).

Files: `images/<patient>_t1.mha`, `images/<patient>_t2.mha` (or `_t2_SPACE.mha` for some
subjects), the same names in `masks/`, and `radiological_gradings.csv` with SPIDER's header
(including its spelling `Pfirrman grade`); a few grading cells are left empty (missing labels).
`Spondylolisthesis`, `Disc herniation` and `Disc bulging` are random and NOT drawn. About a quarter
of the series are stored in another orientation (axes permuted and flipped, direction matrix set
accordingly) to exercise the reader's reorientation.

Ground truth, outside the layout: `_phantom_truth/index.csv` (one row per lesion and series:
`image`, `patient`, `ivd_label`, `kind` in `upper_endplate_defect`, `lower_endplate_defect`,
`upper_marrow_change`, `lower_marrow_change`, `mask`, `mask_value`, and the voxel bounding box
`x0, y0, z0, x1, y1, z1` in the stored mask's index order, end exclusive),
`_phantom_truth/masks/<series>_<kind>.mha` (same geometry and orientation as the series; voxel
value = the IVD label of the lesion) and `_phantom_truth/discs.csv` (the drawn disc parameters).
`truth_volumes` cuts a disc's lesion masks in the frame of its extracted volume.

Reference:
    Paper 002, Table 1 and Fig. 3 (what the scores look like); SPIDER (van der Graaf et al.,
    Sci Data 2024) for the layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import phantoms
from common.fileio import atomic_write_text
from common.fileio import csv_text

TRUTH_DIR = "_phantom_truth"
LESION_KINDS = (
    "upper_endplate_defect",
    "lower_endplate_defect",
    "upper_marrow_change",
    "lower_marrow_change",
)
GRADING_HEADER = [
    "Patient",
    "IVD label",
    "Modic",
    "UP endplate",
    "LOW endplate",
    "Spondylolisthesis",
    "Disc herniation",
    "Disc narrowing",
    "Disc bulging",
    "Pfirrman grade",
]
ROWS, COLS = 224, 128
N_DISCS = 6
# Nucleus T2 brightness by Pfirrmann grade 1..5 (vertebral marrow is about 0.42).
NUCLEUS_T2 = (0.82, 0.67, 0.53, 0.39, 0.25)
ORIENTATIONS = ("LPS", "ASL", "PSR", "AIR")
# Direction cosines of a PIL-ordered array: x -> posterior, y -> inferior, z -> left (columns).
_PIL_DIRECTION = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _unit(angle_deg):
    theta = np.deg2rad(angle_deg)
    return np.array([np.cos(theta), np.sin(theta)])


def _normal(u):
    return np.array([u[1], -u[0]])


def _subject(rng, patient):
    """Draws the anatomy and gradings of one subject (all lengths in mm)."""
    grades = rng.choice(5, size=N_DISCS, p=[0.2, 0.2, 0.22, 0.2, 0.18]) + 1
    narrow_p = np.array([0.1, 0.15, 0.35, 0.6, 0.8])[grades - 1]
    narrowing = (rng.random(N_DISCS) < narrow_p).astype(int)
    modic = np.where(rng.random(N_DISCS) < 0.35, rng.integers(1, 4, N_DISCS), 0)
    discs = []
    # Lordosis: the L5/S1 disc slopes down anteriorly (negative angle: the posterior end is up).
    angles = -np.array([30.0, 16.0, 8.0, 2.0, -2.0, -5.0]) + rng.normal(0, 3, N_DISCS)
    depth = rng.uniform(31, 37)
    for k in range(N_DISCS):
        discs.append(
            {
                "ivd_label": k + 1,
                "pfirrmann": int(grades[k]),
                "narrowing": int(narrowing[k]),
                "up_endplate": int(rng.random() < 0.3),
                "low_endplate": int(rng.random() < 0.3),
                "modic": int(modic[k]),
                "height": rng.uniform(4.5, 6.5) if narrowing[k] else rng.uniform(9.5, 12.0),
                "angle": float(angles[k]),
                "nucleus_t2": NUCLEUS_T2[grades[k] - 1] + rng.normal(0, 0.02),
                "depth": depth * rng.uniform(0.95, 1.0),
                "spondylolisthesis": int(rng.random() < 0.08),
                "herniation": int(rng.random() < 0.2),
                "bulging": int(rng.random() < 0.3),
                # lesion geometry
                "notch_up": (
                    rng.uniform(-0.2, 0.2),
                    rng.uniform(4.5, 6.0),
                    rng.uniform(6.0, 8.0),
                ),
                "notch_low": (
                    rng.uniform(-0.2, 0.2),
                    rng.uniform(4.5, 6.0),
                    rng.uniform(6.0, 8.0),
                ),
                "notch_z": (rng.uniform(-4, 4), rng.uniform(-4, 4)),
                "band": (rng.uniform(0.55, 0.85), rng.uniform(4.5, 7.0), rng.uniform(-3, 3)),
            }
        )
    vertebrae = [
        {"height": rng.uniform(23.5, 27.0), "depth": depth * rng.uniform(1.0, 1.05)}
        for _ in range(N_DISCS)
    ]
    # Walk up from the L5/S1 disc: centres P_k and unit vectors u_k (AP, toward posterior).
    centres = [np.zeros(2)]
    for k in range(1, N_DISCS):
        n_mean = _normal(_unit(discs[k - 1]["angle"])) + _normal(_unit(discs[k]["angle"]))
        n_mean /= np.linalg.norm(n_mean)
        gap = discs[k - 1]["height"] / 2 + vertebrae[k - 1]["height"] + discs[k]["height"] / 2
        centres.append(centres[-1] + gap * n_mean)
    spacing = rng.uniform(1.15, 1.3)
    fov_rows, fov_cols = ROWS * spacing, COLS * spacing
    top = discs[-1]["height"] / 2 + vertebrae[-1]["height"]
    top_y = (centres[-1] + top * _normal(_unit(discs[-1]["angle"])))[1]
    # Place T12's top 2-14 mm below the upper edge (sometimes cut: a partly visible vertebra).
    shift_y = rng.uniform(-4.0, 14.0) - top_y
    shift_x = fov_cols * rng.uniform(0.36, 0.44)
    offset = np.array([shift_x, shift_y])
    for k in range(N_DISCS):
        discs[k]["centre"] = centres[k] + offset
    return {
        "patient": patient,
        "discs": discs,
        "vertebrae": vertebrae,
        "spacing": spacing,
        "fov": (fov_rows, fov_cols),
        "half_width": rng.uniform(20.5, 23.5),
        "mid_offset": rng.uniform(-1.5, 1.5),
        "gain": rng.uniform(500.0, 1500.0),
        "marrow_t2": rng.uniform(0.38, 0.46),
        "space": False,
        "orientation": {},
    }


def _disc_geometry(disc):
    u = _unit(disc["angle"])
    n = _normal(u)
    return disc["centre"], u, n


def _vertebra_corners(subject, k, factor):
    """Corners (mm) of vertebra k (0 = L5, above disc k) scaled to `factor` of its depth."""
    disc = subject["discs"][k]
    centre, u, n = _disc_geometry(disc)
    depth = subject["vertebrae"][k]["depth"] * factor
    bottom = centre + disc["height"] / 2 * n
    if k + 1 < N_DISCS:
        above = subject["discs"][k + 1]
        c2, u2, n2 = _disc_geometry(above)
        top = c2 - above["height"] / 2 * n2
    else:
        u2, n2 = u, n
        top = bottom + subject["vertebrae"][k]["height"] * n
    return np.array(
        [
            bottom - depth / 2 * u,
            bottom + depth / 2 * u,
            top + depth / 2 * u2,
            top - depth / 2 * u2,
        ]
    )


def _sacrum_corners(subject, factor):
    disc = subject["discs"][0]
    centre, u, n = _disc_geometry(disc)
    depth = subject["vertebrae"][0]["depth"] * factor
    top = centre - disc["height"] / 2 * n
    bottom = top - 45.0 * n + 12.0 * u
    return np.array(
        [
            top - depth / 2 * u,
            top + depth / 2 * u,
            bottom + 0.3 * depth * u,
            bottom - 0.3 * depth * u,
        ]
    )


def _disc_points(disc, factor):
    centre, u, n = _disc_geometry(disc)
    half_d = disc["depth"] * factor / 2
    half_h = disc["height"] / 2
    bulge = 1.0 + 0.6 * (disc["height"] < 8)
    return np.array(
        [
            centre - half_d * u + half_h * n,
            centre + half_d * u + half_h * n,
            centre + (half_d + bulge) * u,
            centre + half_d * u - half_h * n,
            centre - half_d * u - half_h * n,
            centre - (half_d + bulge) * u,
        ]
    )


class _Slice:
    """Layered painting of one sagittal slice: T2 and T1 intensities and the label map."""

    def __init__(self, subject, rng):
        self.px = 1.0 / subject["spacing"]
        self.t2 = phantoms.clip01(0.16 + 0.03 * phantoms.smooth_noise((ROWS, COLS), 6, rng))
        self.t1 = phantoms.clip01(0.3 + 0.03 * phantoms.smooth_noise((ROWS, COLS), 6, rng))
        self.labels = np.zeros((ROWS, COLS), dtype=np.uint8)

    def coverage(self, kind, *args):
        canvas = phantoms.blank((ROWS, COLS))
        if kind == "polygon":
            phantoms.draw_polygon(canvas, np.asarray(args[0]) * self.px, value=1.0)
        else:
            centre, axes, angle = args
            axes = np.maximum(np.asarray(axes) * self.px, 0.3)
            phantoms.draw_ellipse(canvas, np.asarray(centre) * self.px, axes, angle, value=1.0)
        return canvas

    def paint(self, cov, t2, t1, label=None):
        self.t2 = self.t2 * (1 - cov) + cov * np.float32(t2)
        self.t1 = self.t1 * (1 - cov) + cov * np.float32(t1)
        if label is not None:
            self.labels[cov > 0.5] = label


def _lateral(z, half_width):
    return float(np.sqrt(max(0.0, 1.0 - (z / half_width) ** 2)))


def _render(subject, slice_z_mm, rng):
    """Renders T2, T1, labels and lesion masks for the slices at lateral offsets `slice_z_mm`."""
    n_slices = len(slice_z_mm)
    t2 = np.zeros((n_slices, ROWS, COLS), np.float32)
    t1 = np.zeros_like(t2)
    labels = np.zeros((n_slices, ROWS, COLS), np.uint8)
    lesions = {kind: np.zeros((n_slices, ROWS, COLS), np.uint8) for kind in LESION_KINDS}
    discs = subject["discs"]
    half_width = subject["half_width"]
    texture = phantoms.smooth_noise((ROWS, COLS), 3, rng)
    for s, z in enumerate(slice_z_mm):
        z = z - subject["mid_offset"]
        sl = _Slice(subject, rng)
        # Posterior fat (a band of the field of view), posterior elements, spinal canal.
        fat_col = int((discs[2]["centre"][0] + 55.0) * sl.px)
        fat = np.zeros((ROWS, COLS), np.float32)
        fat[:, fat_col:] = 1.0
        sl.paint(fat, 0.62, 0.85)
        f_canal = _lateral(z, 9.0)
        wall, normals = [], []
        for disc in discs:
            centre, u, n = _disc_geometry(disc)
            wall.append(centre + (disc["depth"] / 2 + 1.0) * u)
            normals.append(u)
        wall = (
            [wall[0] - 40.0 * _normal(normals[0])] + wall + [wall[-1] + 45.0 * _normal(normals[-1])]
        )
        normals = [normals[0]] + normals + [normals[-1]]
        wall, normals = np.array(wall), np.array(normals)
        start = 17.0 if f_canal > 0 else 3.0
        lamina = np.concatenate([wall + start * normals, (wall + (start + 16.0) * normals)[::-1]])
        sl.paint(sl.coverage("polygon", lamina), 0.3, 0.45)
        if f_canal > 0:
            canal = np.concatenate([wall, (wall + 14.0 * f_canal * normals)[::-1]])
            sl.paint(sl.coverage("polygon", canal), 0.85, 0.15, label=100)
        f_body = _lateral(z, half_width)
        bodies = []
        if f_body > 0.05:
            marrow = subject["marrow_t2"]
            sacrum = _sacrum_corners(subject, f_body)
            cov = sl.coverage("polygon", sacrum)
            sl.paint(cov, 0.12, 0.2)
            inner = sacrum + (sacrum.mean(0) - sacrum) * 0.1
            sl.paint(sl.coverage("polygon", inner), marrow, 0.6)
            bodies.append(("sacrum", cov))
            for k in range(N_DISCS):
                corners = _vertebra_corners(subject, k, f_body)
                label = k + 1
                cov = sl.coverage("polygon", corners)
                outside = corners[:, 1].min() < 0
                sl.paint(cov, 0.12, 0.2, label=label + 100 if outside else label)
                inner = corners + (corners.mean(0) - corners) * 0.1
                sl.paint(sl.coverage("polygon", inner), marrow, 0.6)
                bodies.append((label, cov))
            bone = np.zeros((ROWS, COLS), np.float32)
            for _, cov in bodies:
                bone = np.maximum(bone, cov)
            sl.t2 = sl.t2 + 0.025 * texture * bone
            sl.t1 = sl.t1 + 0.03 * texture * bone
        truth = {kind: np.zeros((ROWS, COLS), np.uint8) for kind in LESION_KINDS}
        f_disc = _lateral(z, half_width - 1.0)
        for k, disc in enumerate(discs):
            if f_body <= 0.05:
                break
            centre, u, n = _disc_geometry(disc)
            above = bodies[k + 1][1]
            below = bodies[k][1]
            # Marrow (Modic) bands beside both endplates.
            if disc["modic"] > 0:
                frac, thick, az = disc["band"]
                f_band = _lateral(z - az, 12.0)
                if f_band > 0:
                    t2v, t1v = {1: (0.74, 0.22), 2: (0.68, 0.88), 3: (0.14, 0.15)}[disc["modic"]]
                    half = disc["depth"] * f_body * frac / 2
                    for side, kind, host in (
                        (1, "upper_marrow_change", above),
                        (-1, "lower_marrow_change", below),
                    ):
                        base = centre + side * disc["height"] / 2 * n
                        band = [
                            base - half * u,
                            base + half * u,
                            base + half * u + side * thick * f_band * n,
                            base - half * u + side * thick * f_band * n,
                        ]
                        cov = sl.coverage("polygon", band) * host
                        sl.paint(cov, t2v, t1v)
                        truth[kind][cov > 0.5] = disc["ivd_label"]
            # Endplate notches (Schmorl nodes).
            for side, flag, kind, geom, host, zk in (
                (1, "up_endplate", "upper_endplate_defect", disc["notch_up"], above, 0),
                (-1, "low_endplate", "lower_endplate_defect", disc["notch_low"], below, 1),
            ):
                if not disc[flag]:
                    continue
                f_notch = _lateral(z - disc["notch_z"][zk], 9.0)
                if f_notch <= 0:
                    continue
                a, r_u, r_n = geom
                base = centre + side * disc["height"] / 2 * n + a * disc["depth"] * u
                cov = (
                    sl.coverage("ellipse", base, (r_u * f_notch, r_n * f_notch), disc["angle"])
                    * host
                )
                sl.paint(cov, 0.85, 0.25)
                truth[kind][cov > 0.5] = disc["ivd_label"]
        if f_disc > 0.05 and f_body > 0.05:
            for disc in discs:
                centre, u, n = _disc_geometry(disc)
                grade, bright = disc["pfirrmann"], disc["nucleus_t2"]
                # Pfirrmann: 1-2 a clear nucleus/annulus distinction, 3 unclear (a blurred
                # nucleus), 4 lost, 5 a uniformly black disc; 2 has a horizontal band.
                annulus = {1: 0.2, 2: 0.2, 3: 0.28, 4: 0.3}.get(grade, bright)
                cov = sl.coverage("polygon", _disc_points(disc, f_disc))
                sl.paint(cov, annulus, 0.3, label=200 + disc["ivd_label"])
                axes = (0.34 * disc["depth"] * f_disc, 0.3 * disc["height"])
                if grade in (3, 4):
                    halo = sl.coverage(
                        "ellipse", centre, (axes[0] * 1.3, axes[1] * 1.3), disc["angle"]
                    )
                    sl.paint(halo * cov, (annulus + bright) / 2, 0.32)
                nucleus = sl.coverage("ellipse", centre, axes, disc["angle"])
                sl.paint(nucleus, bright, 0.34)
                if grade == 2:
                    band = sl.coverage("ellipse", centre, (axes[0] * 0.9, 0.7), disc["angle"])
                    sl.paint(band * nucleus, 0.4, 0.3)
                for kind in LESION_KINDS:
                    truth[kind][cov > 0.5] = 0
        for kind in LESION_KINDS:
            lesions[kind][s] = truth[kind]
        t2[s], t1[s], labels[s] = sl.t2, sl.t1, sl.labels
    return t2, t1, labels, lesions


def _finish_intensity(volume, subject, rng):
    """Bias field, noise, scanner gain: float [0, 1] -> int16 scanner units."""
    field = 1.0 + 0.12 * phantoms.smooth_noise((ROWS, COLS), 40, rng)
    out = np.empty(volume.shape, np.int16)
    for s in range(volume.shape[0]):
        img = phantoms.add_noise(phantoms.clip01(volume[s] * field), 0.015, rng)
        out[s] = np.round(img * subject["gain"]).astype(np.int16)
    return out


def _write_series(path, array_zyx, spacing_xyz, orientation):
    """Writes a PIL-ordered array, reoriented to `orientation` (None keeps PIL)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(tuple(float(v) for v in spacing_xyz))
    image.SetDirection(_PIL_DIRECTION)
    if orientation is not None:
        image = sitk.DICOMOrient(image, orientation)
    phantoms.write_mha(
        path,
        sitk.GetArrayFromImage(image),
        spacing_xyz=image.GetSpacing(),
        direction=image.GetDirection(),
    )
    return image


def write_phantom_dataset(
    root,
    *,
    num_subjects=80,
    seed=0,
    space_fraction=0.15,
    reoriented_fraction=0.25,
    missing_fraction=0.02,
    write_t1=True,
) -> Path:
    """Writes a phantom data set in SPIDER's layout (see the module docstring).

    Args:
        root: output folder (created).
        num_subjects: number of patients (6 graded discs each); the default, 80 (480 discs),
            suits the demo training.
        seed: the same seed writes the same files.
        space_fraction: fraction of patients whose T2 series is a thin-slice `t2_SPACE` series.
        reoriented_fraction: fraction of series stored in another orientation.
        missing_fraction: fraction of grading cells (other than Patient, IVD label) left empty.
        write_t1: also write a T1 series per patient (as SPIDER has).

    Returns:
        `Path(root)`.
    """
    import SimpleITK as sitk

    from common.progress import progress

    root = Path(root)
    if int(num_subjects) < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    root.mkdir(parents=True, exist_ok=True)
    grading_rows, truth_rows, disc_rows = [], [], []
    sequences_per_subject = 2 if write_t1 else 1
    counter = 0
    show = num_subjects * sequences_per_subject * 2 > 200
    for index in progress(
        range(int(num_subjects)), desc="phantom subjects", unit="subjects", enabled=show
    ):
        rng = phantoms.rng([int(seed), index])
        patient = str(index + 1)
        subject = _subject(rng, patient)
        # Every 1/space_fraction-th subject (evenly spread, at least one in 1/fraction subjects).
        space = int((index + 1) * space_fraction) > int(index * space_fraction)
        series = []
        if write_t1:
            series.append(("t1", 4.0, 13))
        series.append(("t2_SPACE", 2.0, 25) if space else ("t2", 4.0, 13))
        rendered = {}
        for sequence, thickness, n_slices in series:
            if (thickness, n_slices) not in rendered:
                slice_z = (np.arange(n_slices) - (n_slices - 1) / 2.0) * thickness
                rendered[thickness, n_slices] = _render(subject, slice_z, rng)
            t2, t1, labels, lesions = rendered[thickness, n_slices]
            volume = t1 if sequence == "t1" else t2
            stored = _finish_intensity(volume, subject, rng)
            orientation = ORIENTATIONS[rng.integers(len(ORIENTATIONS))]
            # Every 1/reoriented_fraction-th series is stored in another orientation.
            counter += 1
            if int(counter * reoriented_fraction) == int((counter - 1) * reoriented_fraction):
                orientation = None
            spacing = (subject["spacing"], subject["spacing"], thickness)
            name = f"{patient}_{sequence}.mha"
            _write_series(root / "images" / name, stored, spacing, orientation)
            _write_series(root / "masks" / name, labels, spacing, orientation)
            for kind, mask in lesions.items():
                if not mask.any():
                    continue
                rel = f"{TRUTH_DIR}/masks/{Path(name).stem}_{kind}.mha"
                stored_mask = _write_series(root / rel, mask, spacing, orientation)
                array = sitk.GetArrayViewFromImage(stored_mask)
                for value in np.unique(array[array > 0]):
                    zz, yy, xx = np.nonzero(array == value)
                    truth_rows.append(
                        [
                            f"images/{name}",
                            patient,
                            int(value),
                            kind,
                            rel,
                            int(value),
                            int(xx.min()),
                            int(yy.min()),
                            int(zz.min()),
                            int(xx.max()) + 1,
                            int(yy.max()) + 1,
                            int(zz.max()) + 1,
                        ]
                    )
        for disc in subject["discs"]:
            cells = [
                disc["modic"],
                disc["up_endplate"],
                disc["low_endplate"],
                disc["spondylolisthesis"],
                disc["herniation"],
                disc["narrowing"],
                disc["bulging"],
                disc["pfirrmann"],
            ]
            cells = ["" if rng.random() < missing_fraction else v for v in cells]
            grading_rows.append([int(patient), disc["ivd_label"], *cells])
            disc_rows.append(
                [
                    patient,
                    disc["ivd_label"],
                    round(disc["height"], 3),
                    round(disc["nucleus_t2"], 4),
                    round(disc["angle"], 3),
                    disc["pfirrmann"],
                    disc["narrowing"],
                    disc["up_endplate"],
                    disc["low_endplate"],
                    disc["modic"],
                ]
            )
    atomic_write_text(root / "radiological_gradings.csv", csv_text(GRADING_HEADER, grading_rows))
    truth_header = ["image", "patient", "ivd_label", "kind", "mask", "mask_value"]
    truth_header += ["x0", "y0", "z0", "x1", "y1", "z1"]
    atomic_write_text(root / TRUTH_DIR / "index.csv", csv_text(truth_header, truth_rows))
    disc_header = ["patient", "ivd_label", "disc_height_mm", "nucleus_t2", "angle_deg"]
    disc_header += ["pfirrmann", "narrowing", "up_endplate", "low_endplate", "modic"]
    atomic_write_text(root / TRUTH_DIR / "discs.csv", csv_text(disc_header, disc_rows))
    return root


def read_truth_index(root):
    """Reads `_phantom_truth/index.csv` as a DataFrame (paths relative to `root`)."""
    import pandas as pd

    return pd.read_csv(Path(root) / TRUTH_DIR / "index.csv", dtype={"patient": str})


def truth_volumes(root, record, *, context=False):
    """Cuts the lesion masks of one disc in the frame of its extracted volume.

    Args:
        root: the phantom data set folder.
        record: one record (row of `spinenet.data.read_dataset`) of a phantom disc.
        context: cut with the TTA context (144 x 256 x 11) instead of 112 x 224 x 9.

    Returns:
        `(volume, masks, regions)`: the disc volume, a dict kind -> bool `(H, W, S)` of this disc's
        lesions (all False when it has none), and the region codes of `extract_disc_volume`
        (1 upper vertebra, 2 disc, 3 lower vertebra).
    """
    import SimpleITK as sitk

    from spinenet.data import CONTEXT_EXTRA_SLICES
    from spinenet.data import CONTEXT_MARGIN_PX
    from spinenet.data import ORIENTATION
    from spinenet.data import extract_disc_volume
    from spinenet.data import read_series

    root = Path(root)
    image, mask, spacing = read_series(record["image_path"], record["mask_path"])
    stem = Path(record["image_path"]).stem
    kinds, arrays = [], []
    for kind in LESION_KINDS:
        path = root / TRUTH_DIR / "masks" / f"{stem}_{kind}.mha"
        if path.is_file():
            stored = sitk.DICOMOrient(sitk.ReadImage(str(path)), ORIENTATION)
            kinds.append(kind)
            arrays.append(sitk.GetArrayFromImage(stored))
    volume, info = extract_disc_volume(
        image,
        mask,
        spacing,
        int(record["ivd_label"]),
        margin_px=CONTEXT_MARGIN_PX if context else 0,
        extra_slices=CONTEXT_EXTRA_SLICES if context else 0,
        label_volumes=arrays,
        source=stem,
    )
    masks = {kind: np.zeros(volume.shape, bool) for kind in LESION_KINDS}
    for kind, cut in zip(kinds, info["labels"]):
        masks[kind] = np.round(cut) == int(record["ivd_label"])
    return volume, masks, info["regions"]
