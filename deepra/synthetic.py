"""Phantom RA2-DREAM data set: hand and foot films whose joints show the scores of `training.csv`.

Layout written (the challenge's, see `deepra.data`):

    <root>/train/training.csv            Patient_ID, Overall_Tol, Overall_erosion, Overall_narrowing,
                                          the 44 erosion and 42 narrowing columns
    <root>/train/<Patient_ID>-LH.jpg     left hand, PA view (also RH, LF, RF)
    <root>/train/<Patient_ID>-LH.xml     the finger/wrist boxes as labelImg writes them (Pascal VOC)
    <root>/train/._<...>.jpg             a macOS AppleDouble companion (junk a reader must skip)
    <root>/test/template.csv             Patient_ID + the same columns, empty, for the test films
    <root>/test/<Patient_ID>-LH.jpg ...
    <root>/_phantom_truth/               not part of the layout: where each lesion is
        index.csv    image, kind ("erosion"), column, score, mask, x0, y0, x1, y1
        masks/<film>__<column>.png       the bone removed by that joint's erosion (255 = eroded)
        joints.csv   image, column, score, gap_px, x, y, ux, uy: every narrowing joint's drawn joint
                     space (width along the bone axis, centre, axis direction)

What the films show. A hand is a forearm (radius, ulna), two rows of carpal bones, five metacarpals
and the phalanges, in soft tissue; a foot is tarsal bones, five metatarsals and the toes. Bones are
capsules and ellipses (`common.phantoms`); every scored joint is a gap between two bone ends:

- narrowing score n (0-4): the joint space is `g0 * (1 - 0.2 n)` pixels wide (g0 = 6 px for finger
  and toe joints, 5 px in the wrist), so grade 4 leaves a fifth of the normal space;
- erosion score e: a round, bite-shaped defect at the bone margin next to the joint, on a random
  side, of radius `0.85 r sqrt(e / 5)` (r the bone's half width), i.e. an area proportional to the
  score. Hand erosion is 0-5 (one bite on the proximal bone). Foot erosion is 0-10, scored as in
  SvH on both sides of the joint: min(e, 5) on the proximal bone, the rest on the distal bone.

Scores are drawn per patient from a severity (about 40% of patients without damage; damaged
patients get non-zero joints at a rate that grows with severity), so most joints score 0 as in the
challenge. `Overall_erosion` and `Overall_narrowing` are the sums of their columns and
`Overall_Tol` their sum. Quirks of the real archive: about a quarter of the films are stored as
RGB, about a fifth carry an EXIF orientation (the pixels are stored rotated; readers that apply the
tag see the upright film, in which all boxes, masks and coordinates are given).

Reference:
    Chaturvedi, "DeepRA", §4.1; van der Heijde, "How to read radiographs according to the
    Sharp/van der Heijde method", J Rheumatol 1999 (erosion 0-5 per joint side, narrowing 0-4).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from common import phantoms as ph
from common.fileio import atomic_write_bytes
from common.fileio import atomic_write_text
from common.progress import progress as _progress
from deepra.columns import EROSION_COLUMNS
from deepra.columns import FOOT_CLASSES
from deepra.columns import HAND_CLASSES
from deepra.columns import JOINT_COLUMNS
from deepra.columns import NARROWING_COLUMNS
from deepra.columns import OVERALL_COLUMNS
from deepra.columns import PATIENT_COLUMN
from deepra.columns import TRAINING_COLUMNS
from deepra.columns import score_max

HAND_SHAPE_HW = (384, 288)
FOOT_SHAPE_HW = (320, 224)
FINGER_GAP_PX = 6.0
WRIST_GAP_PX = 5.0
FIXED_GAP_PX = 3.5
EROSION_RADIUS_FRACTION = 0.85
TRUTH_DIR = "_phantom_truth"
# The header of an AppleDouble file ("._name"), the resource-fork companion macOS adds to archives.
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)

_BACKGROUND = 0.06
_TISSUE = 0.2
_BONE = 0.62
_MEDULLA = 0.08


# ---------------------------------------------------------------------------------------------
# Scores


def _draw_scores(rng):
    """One patient's 86 joint scores (dict column -> int) and the three sums."""
    damaged = rng.random() > 0.4
    severity = rng.uniform(0.25, 0.9) if damaged else 0.0
    scores = {}
    for column in JOINT_COLUMNS:
        top = score_max(column)
        value = 0
        if damaged and rng.random() < 0.55 * severity + 0.1:
            # 1..top, skewed to low grades, more so for mild patients
            value = 1 + int(rng.binomial(top - 1, min(0.95, 0.15 + 0.5 * severity)))
        scores[column] = int(value)
    erosion = sum(scores[c] for c in EROSION_COLUMNS)
    narrowing = sum(scores[c] for c in NARROWING_COLUMNS)
    return {
        "Overall_Tol": erosion + narrowing,
        "Overall_erosion": erosion,
        "Overall_narrowing": narrowing,
        **scores,
    }


def _gap(score, g0):
    return g0 * (1.0 - 0.2 * float(score))


def _bite_radius(score, bone_radius, full=5.0):
    return EROSION_RADIUS_FRACTION * bone_radius * math.sqrt(min(float(score), full) / full)


# ---------------------------------------------------------------------------------------------
# Drawing: a film in canonical orientation (left limb: thumb / big toe on the right)


def _unit(angle_deg):
    """Direction pointing distally (up the image) tilted by `angle_deg` towards +x."""
    t = math.radians(angle_deg)
    return np.array([math.sin(t), -math.cos(t)])


def _normal(u):
    return np.array([-u[1], u[0]])


class _Film:
    """Canvases of one film plus what was drawn where (in local units, mapped to pixels)."""

    def __init__(self, shape_hw, origin_xy, scale, angle_deg, rng):
        self.shape = tuple(shape_hw)
        self.origin = np.asarray(origin_xy, np.float64)
        self.scale = float(scale)
        self.angle = float(angle_deg)
        t = math.radians(angle_deg)
        self.rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        self.rng = rng
        self.bone = ph.blank(self.shape)
        self.medulla = ph.blank(self.shape)
        self.tissue = ph.blank(self.shape)
        self.bites = {}  # column -> coverage canvas
        self.joints = []  # narrowing truth rows (pixel units)
        self.boxes = []  # (label, x0, y0, x1, y1)
        self.scores = {}

    # coordinates
    def p(self, local_xy):
        return self.origin + self.scale * (self.rot @ np.asarray(local_xy, np.float64))

    def v(self, local_vec):
        return self.rot @ np.asarray(local_vec, np.float64)

    # primitives
    def capsule_bone(self, p0, p1, r):
        a, b, rr = self.p(p0), self.p(p1), self.scale * r
        ph.draw_capsule(self.bone, a, b, rr)
        ph.draw_capsule(self.medulla, a, b, 0.5 * rr)

    def ellipse_bone(self, c, axes, angle=0.0):
        center = self.p(c)
        a, b = self.scale * axes[0], self.scale * axes[1]
        ph.draw_ellipse(self.bone, center, (a, b), self.angle + angle)
        ph.draw_ellipse(self.medulla, center, (0.5 * a, 0.5 * b), self.angle + angle)

    def capsule_tissue(self, p0, p1, r):
        ph.draw_capsule(self.tissue, self.p(p0), self.p(p1), self.scale * r)

    def polygon_tissue(self, points):
        ph.draw_polygon(self.tissue, np.array([self.p(q) for q in points]))

    def bite(self, column, center_local, radius):
        if radius <= 0:
            return
        canvas = self.bites.setdefault(column, ph.blank(self.shape))
        ph.draw_ellipse(canvas, self.p(center_local), (self.scale * radius,) * 2)

    def narrowing_joint(self, column, center_local, axis_local, gap, score):
        u = self.v(axis_local)
        c = self.p(center_local)
        self.joints.append(
            {
                "column": column,
                "score": int(score),
                "gap_px": float(self.scale * gap),
                "x": float(c[0]),
                "y": float(c[1]),
                "ux": float(u[0]),
                "uy": float(u[1]),
            }
        )

    def box(self, label, local_points, margin):
        pts = np.array([self.p(q) for q in local_points])
        m = self.scale * margin
        h, w = self.shape
        x0 = max(0, int(math.floor(pts[:, 0].min() - m)))
        y0 = max(0, int(math.floor(pts[:, 1].min() - m)))
        x1 = min(w - 1, int(math.ceil(pts[:, 0].max() + m)))
        y1 = min(h - 1, int(math.ceil(pts[:, 1].max() + m)))
        self.boxes.append((label, x0, y0, x1, y1))

    # a chain of bones along one direction, joints in between
    def chain(self, base, u, bones, gaps, tissue_pad=6.0, tissue_from=None):
        """Draws bones `[(length, radius), ...]` from `base` along `u` with `gaps` between them.

        Returns a list of (start, end, radius) of each bone (local units).
        """
        out = []
        start = np.asarray(base, np.float64)
        for i, (length, radius) in enumerate(bones):
            end = start + length * u
            self.capsule_bone(start, end, radius)
            out.append((start, end, radius))
            if i < len(gaps):
                next_radius = bones[i + 1][1]
                start = end + (radius + gaps[i] + next_radius) * u
        first = out[0][0] if tissue_from is None else tissue_from
        tip = out[-1][1] + out[-1][2] * u
        r_tissue = max(b[2] for b in out[1:]) + tissue_pad if len(out) > 1 else out[0][2] + 6
        self.capsule_tissue(first, tip, r_tissue)
        return out

    def joint_between(self, bone_a, bone_b):
        """Centre and axis of the joint space between two consecutive bones of a chain."""
        a_end, r_a = bone_a[1], bone_a[2]
        b_start, r_b = bone_b[0], bone_b[2]
        u = (b_start - a_end) / max(np.linalg.norm(b_start - a_end), 1e-9)
        tip_a = a_end + r_a * u
        tip_b = b_start - r_b * u
        return 0.5 * (tip_a + tip_b), u

    def erode_end(self, column, bone, u, score, side, full=5.0, at_start=False):
        """A bite at the margin of `bone` next to its distal end (or its start)."""
        start, end, r = bone
        rho = _bite_radius(score, r, full)
        n = _normal(u)
        anchor = start + 0.2 * r * u if at_start else end - 0.2 * r * u
        self.bite(column, anchor + side * 0.95 * r * n, rho)

    # final image
    def render(self):
        eroded = ph.blank(self.shape)
        for canvas in self.bites.values():
            np.maximum(eroded, canvas, out=eroded)
        keep = 1.0 - eroded
        bone = self.bone * keep
        medulla = self.medulla * keep
        texture = ph.smooth_noise(self.shape, 2.5, self.rng)
        img = (
            _BACKGROUND
            + _TISSUE * self.tissue
            + bone * (_BONE + 0.04 * texture)
            - _MEDULLA * medulla * bone
        )
        img = ph.blur(ph.clip01(img), 0.6)
        img = ph.adjust_contrast(img, self.rng.uniform(0.9, 1.08), self.rng.uniform(-0.02, 0.04))
        return ph.add_noise(img, 0.012, self.rng)

    def erosion_masks(self):
        return {c: (canvas > 0.5) & (self.bone > 0.5) for c, canvas in self.bites.items()}


def _hand(film, limb, scores, rng):
    """Draws a hand (canonical: thumb on the right) and records boxes, bites and joints."""
    s = scores
    side = lambda: float(rng.choice([-1.0, 1.0]))  # noqa: E731
    g = {c: _gap(s[f"{limb}_wrist_J__{c}"], WRIST_GAP_PX) for c in ("radcar", "capnlun", "mna")}
    g.update({c: _gap(s[f"{limb}_wrist_J__{c}"], WRIST_GAP_PX) for c in ("cmc3", "cmc4", "cmc5")})

    # forearm
    film.polygon_tissue([(-48, 140), (45, 140), (50, 10), (-44, 10)])
    film.capsule_bone((14, 160), (14, 42), 15)
    radius_head = ((12, 30), (30, 11))
    film.ellipse_bone(*radius_head)
    film.capsule_bone((-30, 160), (-30, 42), 9)
    ulna_top = 42 - 9

    def top_of(ellipse, x):
        (cx, cy), (a, b) = ellipse
        return cy - b * math.sqrt(max(0.0, 1.0 - ((x - cx) / a) ** 2))

    # proximal carpal row over the radius (radiocarpal joint) and ulna
    lunate = ((2.0, top_of(radius_head, 2.0) - g["radcar"] - 9), (11, 9))
    navicular = ((26.0, top_of(radius_head, 26.0) - g["radcar"] - 8), (12, 8))
    triquetrum = ((-24.0, ulna_top - FIXED_GAP_PX - 8), (9, 8))
    # distal row
    capitate = ((2.0, lunate[0][1] - 9 - g["capnlun"] - 13), (10, 13))
    trapezium = ((28.0, navicular[0][1] - 8 - g["mna"] - 8), (9, 8))
    hamate = ((-20.0, triquetrum[0][1] - 8 - FIXED_GAP_PX - 11), (12, 11))
    trapezoid = ((16.0, navicular[0][1] - 8 - FIXED_GAP_PX - 6), (5, 6))
    for bone in (lunate, navicular, triquetrum, capitate, trapezium, hamate, trapezoid):
        film.ellipse_bone(*bone)
    film.polygon_tissue([(-50, 20), (52, 20), (48, -125), (-46, -118)])  # palm

    # wrist narrowing truth (vertical joints through the bone centres)
    up = np.array([0.0, -1.0])
    rh_top = top_of(radius_head, 2.0)
    film.narrowing_joint(
        f"{limb}_wrist_J__radcar",
        (2.0, rh_top - 0.5 * g["radcar"]),
        up,
        g["radcar"],
        s[f"{limb}_wrist_J__radcar"],
    )
    film.narrowing_joint(
        f"{limb}_wrist_J__capnlun",
        (2.0, lunate[0][1] - 9 - 0.5 * g["capnlun"]),
        up,
        g["capnlun"],
        s[f"{limb}_wrist_J__capnlun"],
    )
    film.narrowing_joint(
        f"{limb}_wrist_J__mna",
        (28.0, navicular[0][1] - 8 - 0.5 * g["mna"]),
        up,
        g["mna"],
        s[f"{limb}_wrist_J__mna"],
    )

    # metacarpal bases: digit -> (x of base, top of the carpal bone below, gap)
    digit_angle = {2: 9.0, 3: 0.0, 4: -9.0, 5: -18.0}
    lengths = {  # metacarpal, proximal, middle, distal phalanx
        2: (56, 32, 18, 13),
        3: (58, 36, 22, 14),
        4: (53, 33, 20, 13),
        5: (47, 26, 15, 12),
    }
    radii = (7.0, 6.5, 5.5, 5.0)
    bases = {
        2: (16.0, trapezoid[0][1] - 6, FIXED_GAP_PX),
        3: (2.0, capitate[0][1] - 13, g["cmc3"]),
        4: (-14.0, top_of(hamate, -14.0), g["cmc4"]),
        5: (-27.0, top_of(hamate, -27.0), g["cmc5"]),
    }
    mc_bases = {}
    for digit in (2, 3, 4, 5):
        jitter = rng.uniform(-2.0, 2.0)
        u = _unit(digit_angle[digit] + jitter)
        x, top, gap = bases[digit]
        base = np.array([x, top - gap - radii[0]])
        mc_bases[digit] = base
        if digit in (3, 4, 5):
            film.narrowing_joint(
                f"{limb}_wrist_J__cmc{digit}",
                (x, top - 0.5 * gap),
                up,
                gap,
                s[f"{limb}_wrist_J__cmc{digit}"],
            )
        mcp_j = s[f"{limb}_mcp_J__{digit}"]
        pip_j = s[f"{limb}_pip_J__{digit}"]
        gaps = (_gap(mcp_j, FINGER_GAP_PX), _gap(pip_j, FINGER_GAP_PX), FIXED_GAP_PX)
        bones = list(zip(lengths[digit], radii, strict=True))
        mc_end = base + lengths[digit][0] * u
        chain = film.chain(base, u, bones, gaps, tissue_from=mc_end - 14 * u)
        (mcp_c, mcp_u), (pip_c, pip_u) = (
            film.joint_between(chain[0], chain[1]),
            film.joint_between(chain[1], chain[2]),
        )
        film.narrowing_joint(f"{limb}_mcp_J__{digit}", mcp_c, mcp_u, gaps[0], mcp_j)
        film.narrowing_joint(f"{limb}_pip_J__{digit}", pip_c, pip_u, gaps[1], pip_j)
        film.erode_end(f"{limb}_mcp_E__{digit}", chain[0], u, s[f"{limb}_mcp_E__{digit}"], side())
        film.erode_end(f"{limb}_pip_E__{digit}", chain[1], u, s[f"{limb}_pip_E__{digit}"], side())
        tip = chain[-1][1] + chain[-1][2] * u
        film.box(f"finger{digit - 1}", [mc_end - 22 * u, tip], margin=radii[1] + 8)

    # thumb: metacarpal on the trapezium, MCP (scored both ways), IP (erosion only)
    u = _unit(40.0 + rng.uniform(-3.0, 3.0))
    base = np.array([trapezium[0][0] + 4, trapezium[0][1] - 8 - FIXED_GAP_PX - 7.5])
    mcp1 = s[f"{limb}_mcp_J__1"]
    gaps = (_gap(mcp1, FINGER_GAP_PX), FIXED_GAP_PX)
    bones = [(36, 7.5), (24, 6.5), (18, 6.0)]
    chain = film.chain(base, u, bones, gaps, tissue_from=base + 14 * u)
    mcp_c, mcp_u = film.joint_between(chain[0], chain[1])
    film.narrowing_joint(f"{limb}_mcp_J__1", mcp_c, mcp_u, gaps[0], mcp1)
    film.erode_end(f"{limb}_mcp_E__1", chain[0], u, s[f"{limb}_mcp_E__1"], side())
    film.erode_end(f"{limb}_mcp_E__ip", chain[1], u, s[f"{limb}_mcp_E__ip"], side())
    tip = chain[-1][1] + chain[-1][2] * u
    film.box("thumb", [chain[0][1] - 18 * u, tip], margin=6.5 + 8)

    # wrist erosions (margins of the bones the columns name)
    e = lambda c: s[f"{limb}_wrist_E__{c}"]  # noqa: E731
    film.erode_end(f"{limb}_wrist_E__mc1", chain[0], u, e("mc1"), side(), at_start=True)
    for name, (center, axes), direction in (
        ("mul", trapezium, (1.0, -0.3)),
        ("nav", navicular, (1.0, 0.2)),
        ("lunate", lunate, (-1.0, 0.3)),
    ):
        d = np.asarray(direction) / np.linalg.norm(direction)
        edge = np.asarray(center) + d * np.array(axes) * 0.95
        film.bite(f"{limb}_wrist_E__{name}", edge, _bite_radius(e(name), min(axes)))
    film.bite(
        f"{limb}_wrist_E__radius",
        (radius_head[0][0] + 27, radius_head[0][1] - 2),
        _bite_radius(e("radius"), 11),
    )
    film.bite(f"{limb}_wrist_E__ulna", (-30 - 8.5, ulna_top + 5), _bite_radius(e("ulna"), 9))

    film.box(
        "wrist",
        [
            (-36, radius_head[0][1] + 6),
            (42, radius_head[0][1] + 6),
            (-36, mc_bases[5][1] - 4),
            (40, mc_bases[2][1] - 4),
            (base[0] + 6, base[1] - 4),
        ],
        margin=3,
    )


def _foot(film, limb, scores, rng):
    """Draws a foot (canonical: big toe on the right) and records boxes, bites and joints."""
    s = scores
    side = lambda: float(rng.choice([-1.0, 1.0]))  # noqa: E731
    film.polygon_tissue([(-50, 150), (52, 150), (50, -40), (-46, -30)])
    for center, axes in (
        ((-2, 95), (40, 22)),  # calcaneus/talus region
        ((-26, 48), (11, 14)),  # cuboid
        ((-4, 46), (8, 12)),  # lateral cuneiform
        ((12, 44), (7, 12)),  # middle cuneiform
        ((30, 46), (10, 13)),  # medial cuneiform
    ):
        film.ellipse_bone(center, axes)
    meta = {  # toe -> (x of base, angle, metatarsal length, radius)
        1: (33.0, 8.0, 70, 8.0),
        2: (14.0, 3.0, 80, 5.5),
        3: (-1.0, -3.0, 76, 5.2),
        4: (-16.0, -9.0, 70, 5.0),
        5: (-30.0, -15.0, 64, 5.0),
    }
    for toe in (1, 2, 3, 4, 5):
        x, angle, length, radius = meta[toe]
        u = _unit(angle + rng.uniform(-2.0, 2.0))
        base = np.array([x, 30.0 - radius])
        mtp_j = s[f"{limb}_mtp_J__{toe}"]
        mtp_e = s[f"{limb}_mtp_E__{toe}"]
        if toe == 1:
            ip_j = s[f"{limb}_mtp_J__ip"]
            ip_e = s[f"{limb}_mtp_E__ip"]
            gaps = (_gap(mtp_j, FINGER_GAP_PX), _gap(ip_j, FINGER_GAP_PX))
            bones = [(length, radius), (30, 7.0), (22, 6.5)]
        else:
            gaps = (_gap(mtp_j, FINGER_GAP_PX), FIXED_GAP_PX, 2.5)
            bones = [(length, radius), (22, 4.5), (9, 4.0), (8, 3.8)]
        mt_end = base + length * u
        chain = film.chain(base, u, bones, gaps, tissue_pad=5.0, tissue_from=mt_end - 20 * u)
        mtp_c, mtp_u = film.joint_between(chain[0], chain[1])
        film.narrowing_joint(f"{limb}_mtp_J__{toe}", mtp_c, mtp_u, gaps[0], mtp_j)
        # SvH foot erosion 0-10: both sides of the joint, 0-5 each
        film.erode_end(f"{limb}_mtp_E__{toe}", chain[0], u, min(mtp_e, 5), side())
        film.erode_end(
            f"{limb}_mtp_E__{toe}", chain[1], u, max(mtp_e - 5, 0), side(), at_start=True
        )
        if toe == 1:
            ip_c, ip_u = film.joint_between(chain[1], chain[2])
            film.narrowing_joint(f"{limb}_mtp_J__ip", ip_c, ip_u, gaps[1], ip_j)
            film.erode_end(f"{limb}_mtp_E__ip", chain[1], u, min(ip_e, 5), side())
            film.erode_end(
                f"{limb}_mtp_E__ip", chain[2], u, max(ip_e - 5, 0), side(), at_start=True
            )
        tip = chain[-1][1] + chain[-1][2] * u
        label = "toe" if toe == 1 else f"finger{toe - 1}"
        film.box(label, [mt_end - 20 * u, tip], margin=bones[1][1] + 7)


def render_film(limb, scores, rng):
    """Draws one phantom film.

    Args:
        limb: "LH", "RH", "LF" or "RF" (right limbs are drawn mirrored).
        scores: dict with (at least) the joint columns of that limb.
        rng: a numpy Generator (the same seed gives the same anatomy whatever the scores).

    Returns:
        `(image, boxes, masks, joints)` in the upright frame: float32 image `(H, W)` in [0, 1];
        boxes `[(label, xmin, ymin, xmax, ymax)]`; masks `{erosion column: bool (H, W)}`; joints
        `[{"column", "score", "gap_px", "x", "y", "ux", "uy"}]` for the narrowing joints.
    """
    hand = limb in ("LH", "RH")
    shape = HAND_SHAPE_HW if hand else FOOT_SHAPE_HW
    h, w = shape
    origin = (w * (0.42 if hand else 0.5), h * (0.78 if hand else 0.55))
    origin = (origin[0] + rng.uniform(-8, 8), origin[1] + rng.uniform(-6, 6))
    film = _Film(shape, origin, rng.uniform(0.93, 1.05), rng.uniform(-6.0, 6.0), rng)
    (_hand if hand else _foot)(film, limb, scores, rng)
    image = film.render()
    masks = film.erosion_masks()
    boxes = list(film.boxes)
    joints = [dict(j) for j in film.joints]
    if limb in ("RH", "RF"):  # the right limb is the mirror image
        image = image[:, ::-1].copy()
        masks = {c: m[:, ::-1].copy() for c, m in masks.items()}
        boxes = [(lab, w - 1 - x1, y0, w - 1 - x0, y1) for lab, x0, y0, x1, y1 in boxes]
        for j in joints:
            j["x"] = (w - 1) - j["x"]
            j["ux"] = -j["ux"]
    order = HAND_CLASSES if hand else FOOT_CLASSES
    boxes.sort(key=lambda b: order.index(b[0]))
    return image, boxes, masks, joints


# ---------------------------------------------------------------------------------------------
# Files


def _write_csv(path, frame):
    return atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def voc_xml(image_path, shape_hw, boxes, depth=1):
    """The Pascal VOC XML text that labelImg writes for one image.

    Args:
        image_path: the image file (its name and folder go into the XML).
        shape_hw: (height, width) of the image as displayed.
        boxes: list of `(label, xmin, ymin, xmax, ymax)` in pixels.
        depth: channels (1 gray, 3 RGB).

    Returns:
        str.
    """
    image_path = Path(image_path)
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = image_path.parent.name
    ET.SubElement(root, "filename").text = image_path.name
    ET.SubElement(root, "path").text = str(image_path)
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "Unknown"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(shape_hw[1]))
    ET.SubElement(size, "height").text = str(int(shape_hw[0]))
    ET.SubElement(size, "depth").text = str(int(depth))
    ET.SubElement(root, "segmented").text = "0"
    for label, x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = label
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(int(value))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def write_phantom_dataset(root, *, num_subjects=64, seed=0, num_test_subjects=None):
    """Writes a phantom RA2-DREAM data set (layout and truth as the module docstring says).

    Args:
        root: destination folder (created; existing phantom files are overwritten).
        num_subjects: training patients (four films each, scores in `train/training.csv`).
        seed: random seed; the same seed gives the same files.
        num_test_subjects: patients in `test/` (default `max(2, num_subjects // 8)`).

    Returns:
        pathlib.Path of `root`.
    """
    if int(num_subjects) < 1:
        raise ValueError(f"num_subjects must be at least 1, got {num_subjects}")
    root = Path(root)
    n_test = max(2, int(num_subjects) // 8) if num_test_subjects is None else int(num_test_subjects)
    patients = [f"PHA{i + 1:03d}" for i in range(int(num_subjects) + n_test)]
    train_ids, test_ids = patients[: int(num_subjects)], patients[int(num_subjects) :]
    films = [(pid, limb, "train") for pid in train_ids for limb in ("LH", "RH", "LF", "RF")]
    films += [(pid, limb, "test") for pid in test_ids for limb in ("LH", "RH", "LF", "RF")]

    score_rows = {pid: _draw_scores(ph.rng([seed, i, 1])) for i, pid in enumerate(patients)}
    index_rows, joint_rows = [], []
    progress = _progress(films, desc="phantom films", unit="films", enabled=len(films) * 3 >= 200)
    for k, (pid, limb, split) in enumerate(progress):
        film_rng = ph.rng([seed, k, 2])
        image, boxes, masks, joints = render_film(limb, score_rows[pid], film_rng)
        name = f"{pid}-{limb}.jpg"
        rel = f"{split}/{name}"
        rgb = film_rng.random() < 0.25
        orientation = int(film_rng.choice([3, 6, 8])) if film_rng.random() < 0.2 else None
        tint = (1.0, 0.97, 0.93) if rgb else None
        ph.write_jpeg(
            root / rel, image, quality=92, rgb=rgb, exif_orientation=orientation, tint=tint
        )
        if split == "train":
            xml = voc_xml(root / rel, image.shape, boxes, depth=3 if rgb else 1)
            atomic_write_text(root / split / f"{pid}-{limb}.xml", xml, durable=False)
        for column, mask in sorted(masks.items()):
            if not mask.any():
                continue
            mask_rel = f"masks/{pid}-{limb}__{column}.png"
            ph.write_png(root / TRUTH_DIR / mask_rel, mask.astype(np.float32))
            x0, y0, x1, y1 = ph.mask_bbox(mask)
            index_rows.append(
                {
                    "image": rel,
                    "kind": "erosion",
                    "column": column,
                    "score": int(score_rows[pid][column]),
                    "mask": mask_rel,
                    "x0": x0,
                    "y0": y0,
                    "x1": x1,
                    "y1": y1,
                }
            )
        for j in joints:
            joint_rows.append({"image": rel, **j})

    training = pd.DataFrame([{PATIENT_COLUMN: p, **score_rows[p]} for p in train_ids])
    _write_csv(root / "train" / "training.csv", training[list(TRAINING_COLUMNS)])
    template = pd.DataFrame({PATIENT_COLUMN: test_ids})
    for column in OVERALL_COLUMNS + JOINT_COLUMNS:
        template[column] = ""
    _write_csv(root / "test" / "template.csv", template[list(TRAINING_COLUMNS)])
    # macOS AppleDouble companions, as archives packed on a Mac carry them
    for pid in train_ids[:2]:
        atomic_write_bytes(root / "train" / f"._{pid}-LH.jpg", _APPLEDOUBLE)
    index_columns = ["image", "kind", "column", "score", "mask", "x0", "y0", "x1", "y1"]
    _write_csv(root / TRUTH_DIR / "index.csv", pd.DataFrame(index_rows, columns=index_columns))
    joint_columns = ["image", "column", "score", "gap_px", "x", "y", "ux", "uy"]
    _write_csv(root / TRUTH_DIR / "joints.csv", pd.DataFrame(joint_rows, columns=joint_columns))
    return root


def truth_masks_for_crops(root, records, image_size_hw):
    """The drawn erosions inside each crop, resized as the crops are (for attention checks).

    Args:
        root: a phantom data set written by `write_phantom_dataset`.
        records: crop records (`deepra.data.joint_records`) of films of that data set.
        image_size_hw: (height, width) of the crops.

    Returns:
        float32 array `(N, H, W)`: the union of the erosion masks of the columns the crop's
        outputs predict (zeros where the crop has no erosion).
    """
    import cv2

    root = Path(root)
    index = pd.read_csv(root / TRUTH_DIR / "index.csv")
    by_key = {(r.image, r.column): r.mask for r in index.itertuples()}
    h, w = (int(v) for v in image_size_hw)
    out = np.zeros((len(records), h, w), np.float32)
    columns = [c for c in records.columns if c.endswith("__column")]
    for i, record in enumerate(records.to_dict("records")):
        rel = Path(record["path"]).resolve().relative_to(root.resolve()).as_posix()
        x0, y0 = int(math.floor(record["xmin"])), int(math.floor(record["ymin"]))
        x1, y1 = int(math.ceil(record["xmax"])) + 1, int(math.ceil(record["ymax"])) + 1
        for key in columns:
            mask_rel = by_key.get((rel, record[key]))
            if mask_rel is None:
                continue
            mask = cv2.imread(str(root / TRUTH_DIR / mask_rel), cv2.IMREAD_GRAYSCALE)
            crop = (mask[max(0, y0) : y1, max(0, x0) : x1] > 127).astype(np.float32)
            out[i] = np.maximum(out[i], cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    return out
