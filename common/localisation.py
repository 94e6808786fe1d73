"""Does an explanation map find the lesion? Scored against maps that ignore the image (issue 15.1).

Every package draws a map per image (kneeoa: the attention mask; deepra: the attention of each joint
crop; spinenet: the evidence hotspots of each slice; boneage and mura: the class activation map).
The phantoms write where each lesion is (`_phantom_truth/masks/`), so the map can be scored, and the
score only means something beside the same score for maps that cannot see the image:

- `center_prior`: the mean lesion mask of the *other* images of the split (leave one out), a fixed
  map, the best a content-blind map can do (it knows where lesions usually are, but not where this
  one is);
- `untrained`: the map of the same architecture with fresh weights;
- `shuffled`: the model's own map for another image of the same split (a derangement).

The measure (`METRIC`) is the share of the map's energy inside the lesion mask: the map is clipped
at 0 (a negative weight is no evidence), resized to the mask's grid and normalised to sum 1, and the
score is its sum inside the mask. A map that ignores the image scores the mask's area fraction on
average (`chance`: a uniform map); a perfect one scores 1. We chose it over the pointing game (is
the peak inside the mask?) because it uses the whole map, so a few dozen images give a usable
interval; `pointing_game` is here too, for readers who want the other one.

`localisation_block` returns the `localisation` block of `metrics.json`: the model's score with a
bootstrap interval, the chance level, the three controls with their intervals, and the one-sided
paired bootstrap p-value of "the model scores higher than the best control".
"""

from __future__ import annotations

import cv2
import numpy as np

METRIC = "energy_inside_lesion"
CONTROLS = ("center_prior", "untrained", "shuffled")


def _as_maps(maps, shape_hw):
    """Float32 maps resized to `shape_hw`, negatives clipped to 0; one per image."""
    height, width = (int(v) for v in shape_hw)
    out = np.empty((len(maps), height, width), np.float32)
    for i, item in enumerate(maps):
        item = np.asarray(item, np.float32)
        while item.ndim > 2 and item.shape[-1] == 1:  # (H, W, 1): a channel axis
            item = item[..., 0]
        if item.ndim != 2:
            raise ValueError(f"map {i}: expected a 2-D map, got shape {np.shape(maps[i])}")
        if item.shape != (height, width):
            item = cv2.resize(item, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = np.maximum(np.nan_to_num(item, nan=0.0), 0.0)
    return out


def _as_masks(masks):
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise ValueError(f"masks: expected (N, H, W), got shape {masks.shape}")
    return masks > 0.5 if masks.dtype != bool else masks


def energy_inside(maps, masks):
    """Per image: the share of the map's (clipped, normalised) energy that lies inside its mask.

    Args:
        maps: N maps of any size (resized bilinearly to the masks' grid).
        masks: (N, H, W) lesion masks (bool, or values > 0.5 inside).

    Returns:
        float64 array of N scores in [0, 1]; a map with no positive energy is scored as a uniform
        map (its mask's area fraction), since it points nowhere.
    """
    masks = _as_masks(masks)
    maps = _as_maps(maps, masks.shape[1:])
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps for {len(masks)} masks")
    total = maps.reshape(len(maps), -1).sum(axis=1, dtype=np.float64)
    inside = (maps * masks).reshape(len(maps), -1).sum(axis=1, dtype=np.float64)
    area = masks.reshape(len(masks), -1).mean(axis=1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), area)


def pointing_game(maps, masks):
    """Per image: 1.0 when the map's peak lies inside its mask, else 0.0 (ties: the first peak)."""
    masks = _as_masks(masks)
    maps = _as_maps(maps, masks.shape[1:])
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    return masks.reshape(len(masks), -1)[np.arange(len(masks)), flat].astype(np.float64)


def center_prior_maps(masks):
    """Leave-one-out mean lesion mask: image i gets the mean of every other image's mask.

    Needs at least two masks. The same fixed map for every image but its own: it knows where lesions
    usually are in this split, and nothing of image i.
    """
    masks = _as_masks(masks).astype(np.float64)
    if len(masks) < 2:
        raise ValueError("the center prior needs at least two lesion masks")
    total = masks.sum(axis=0)
    return ((total[None] - masks) / (len(masks) - 1)).astype(np.float32)


def shuffled_maps(maps, seed=0, groups=None):
    """The maps dealt to other images: a random derangement (no image keeps its own map).

    Args:
        maps: N maps (N >= 2).
        seed: seed of the permutation.
        groups: optional group per image (e.g. the film a joint crop comes from); an image then
            gets a map from another group when one exists, so that two crops of one film, which
            share content, are not each other's control.
    """
    n = len(maps)
    if n < 2:
        raise ValueError("shuffled maps need at least two images")
    rng = np.random.default_rng(seed)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    for _ in range(1000):
        order = rng.permutation(n)
        if np.all(groups[order] != groups) or len(np.unique(groups)) < 2:
            if np.all(order != np.arange(n)):
                break
    else:  # a cyclic shift is always a derangement
        order = np.roll(np.arange(n), 1)
    return [maps[int(j)] for j in order]


def _interval(scores, rng_index, alpha):
    boot = scores[rng_index].mean(axis=1)
    return float(np.quantile(boot, alpha / 2)), float(np.quantile(boot, 1 - alpha / 2))


def localisation_block(
    model_maps,
    masks,
    *,
    untrained_maps,
    groups=None,
    unit="image",
    n_boot=1000,
    seed=0,
    alpha=0.05,
):
    """The `localisation` block of `metrics.json`: the model's map against content-blind controls.

    Args:
        model_maps: the package's map per scored unit (image, crop or slice).
        masks: (N, H, W) lesion masks of the same units.
        untrained_maps: the maps of the same architecture with fresh weights, same units.
        groups: optional group per unit (the film or series it comes from): the bootstrap resamples
            whole groups and the shuffled control deals maps across groups.
        unit: what one score is about (`image`, `crop`, `slice`), written into the block.
        n_boot: bootstrap resamples for the intervals and the p-value.
        seed: seed of the bootstrap and of the shuffle.
        alpha: 1 - confidence level of the intervals.

    Returns:
        dict with `metric`, `unit`, `n`, `model` / `chance` / each control as
        `{"value", "ci_low", "ci_high"}`, `controls`, `best_control`, `margin` (model minus the best
        control) and `p_value` (one-sided paired bootstrap of model <= best control, with the +1
        correction so that it is never 0).
    """
    masks = _as_masks(masks)
    n = len(masks)
    if n < 2:
        raise ValueError(f"localisation needs at least two {unit}s with a lesion, got {n}")
    scores = {
        "model": energy_inside(model_maps, masks),
        "center_prior": energy_inside(center_prior_maps(masks), masks),
        "untrained": energy_inside(untrained_maps, masks),
        "shuffled": energy_inside(shuffled_maps(list(model_maps), seed, groups), masks),
    }
    chance = masks.reshape(n, -1).mean(axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    if groups is None:
        index = rng.integers(0, n, size=(n_boot, n))
    else:
        codes, members = _group_members(groups)
        picks = rng.integers(0, len(members), size=(n_boot, len(members)))
        index = _expand_groups(picks, members, n)

    def summary(values):
        low, high = _interval(values, index, alpha)
        return {"value": float(values.mean()), "ci_low": low, "ci_high": high}

    controls = {name: summary(scores[name]) for name in CONTROLS}
    best = max(CONTROLS, key=lambda name: controls[name]["value"])
    difference = scores["model"] - scores[best]
    boot = difference[index].mean(axis=1)
    p_value = (1 + int(np.count_nonzero(boot <= 0))) / (n_boot + 1)
    return {
        "metric": METRIC,
        "unit": unit,
        "n": int(n),
        "model": summary(scores["model"]),
        "chance": summary(chance),
        "controls": controls,
        "best_control": best,
        "margin": float(difference.mean()),
        "p_value": float(p_value),
    }


def _group_members(groups):
    codes, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(codes))]
    return codes, members


def _expand_groups(picks, members, n):
    """Row indices of each resample of whole groups, cut or padded (by wrapping) to n rows so that
    every resample is an array of the same shape (means are per row, so the cut barely matters)."""
    out = np.empty((len(picks), n), np.int64)
    for b, chosen in enumerate(picks):
        rows = np.concatenate([members[g] for g in chosen])
        out[b] = np.resize(rows, n)
    return out


def beats_controls(block, margin=0.0, p_value=0.05):
    """True when the model's score exceeds every control's by more than `margin` with the block's
    p-value below `p_value`: the check the tests and the report's verdict use."""
    best = block["controls"][block["best_control"]]["value"]
    return bool(block["model"]["value"] - best > margin and block["p_value"] < p_value)
