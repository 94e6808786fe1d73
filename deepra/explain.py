"""Does DeepRA's attention find the erosion? Its attention per joint crop against content-blind maps.

The map DeepRA draws is the attention mask of each joint model (§4.4, Fig. 4: the sigmoid weights
of the locally connected layer over the backbone's grid), one per joint crop. On phantoms
(`deepra.synthetic` writes the bone each erosion removed to `_phantom_truth/`), `evaluate` scores
it with `common.localisation`: the share of the attention's energy inside the drawn erosions of the
crop, beside the same share for the centre prior (the mean erosion mask of the other crops), the
same architecture with fresh weights, and another film's crop's attention (issue 15.1).

Choices (the paper is silent on all of them):

- Units: held-out crops of the EROSION models (hand, foot and wrist) that hold at least one drawn
  erosion; narrowing has no lesion mask in the phantoms (it is a thinner gap, not a region).
- Groups: the film a crop comes from. The bootstrap resamples films, and the shuffled control deals
  each crop a crop of another film (crops of one film overlap in content).
- Cap: at most `MAX_CROPS` (96) crops are scored, a seeded random subset when there are more, so
  that the untrained copies' forward passes cost a few seconds on a CPU; `n` in the block says
  how many were scored.
- Untrained control: `keras.models.clone_model` of each scored model (the same layers and
  configuration, fresh initial weights; a pretrained backbone is re-initialised too), after
  `keras.utils.set_random_seed(seed)` so that the block is the same on every run.
"""

from __future__ import annotations

import cv2
import numpy as np

from common import reports
from common.identifiers import report_caption
from common.localisation import center_prior_maps
from common.localisation import localisation_block
from common.localisation import shuffled_maps
from common.phantom_truth import untrained_copy  # noqa: F401  (the tests import it here)
from deepra.columns import JOINT_MODELS
from deepra.joints import explain_joint_model
from deepra.synthetic import truth_masks_for_crops

#: At most this many crops with a drawn erosion are scored per evaluation (seeded subset).
MAX_CROPS = 96
#: Crops drawn in the report (the largest erosions first).
PANELS = 3
#: The joint models whose crops carry a lesion mask in the phantoms.
EROSION_MODELS = tuple(key for key, (_, task, _) in JOINT_MODELS.items() if task == "erosion")


def attention_maps(model, crops, batch_size=64):
    """The attention mask of a joint model for each crop.

    Args:
        model: a joint model (`deepra.joints.build_joint_model` or loaded).
        crops: `(N, H, W)` or `(N, H, W, C)` crops in [0, 1] (gray crops are repeated to the
            model's channels).
        batch_size: crops per forward pass.

    Returns:
        float32 `(N, h, w)`: the attention weights on the backbone's grid.
    """
    crops = np.asarray(crops, np.float32)
    if crops.ndim == 3:
        crops = crops[..., None]
    channels = int(model.input_shape[-1])
    if crops.shape[-1] != channels:
        crops = np.repeat(crops[..., :1], channels, axis=-1)
    runner = explain_joint_model(model)
    out = []
    for start in range(0, len(crops), int(batch_size)):
        result = runner(crops[start : start + int(batch_size)], training=False)
        out.append(np.asarray(result["attention_mask"], np.float32)[..., 0])
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


def attention_localisation(
    joint_models,
    joint_results,
    truth_root,
    *,
    max_crops=MAX_CROPS,
    seed=0,
    n_boot=1000,
    panels=PANELS,
):
    """The `localisation` block of DeepRA's attention and a few report panels.

    Args:
        joint_models: {joint model key: model} (the models that produced `joint_results`).
        joint_results: `deepra.pipeline.predict_joints(..., explain=True)` on films of the phantom
            data set at `truth_root` (crop records with `attrs["attention"]` and `attrs["crops"]`).
        truth_root: the phantom data set folder (holding `_phantom_truth/`).
        max_crops: cap on the crops scored (a seeded random subset when more have an erosion).
        seed: seed of the subset, the untrained weights, the shuffle and the bootstrap.
        n_boot: bootstrap resamples.
        panels: how many crops to draw (model beside the controls, erosion outlined).

    Returns:
        `(block, panels)`: the `common.localisation.localisation_block` dict (unit "crop", groups
        = films) with `models` (the joint models scored) added, and a list of `(png, caption)`;
        `(None, [])` when fewer than two held-out crops hold a drawn erosion.
    """
    units = []  # (key, row index, mask)
    shape = None
    for key in EROSION_MODELS:
        records = joint_results.get(key)
        if records is None or len(records) == 0 or "attention" not in records.attrs:
            continue
        crops = records.attrs["crops"]
        masks = truth_masks_for_crops(truth_root, records, crops.shape[1:3])
        shape = shape or masks.shape[1:]
        for i in np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1) > 0.5):
            mask = masks[i]
            if mask.shape != shape:
                mask = cv2.resize(mask, shape[::-1], interpolation=cv2.INTER_AREA)
            units.append((key, int(i), mask))
    if len(units) < 2:
        return None, []
    if len(units) > int(max_crops):
        keep = np.random.default_rng([int(seed), 15]).choice(len(units), int(max_crops), False)
        units = [units[i] for i in sorted(keep)]
    masks = np.stack([mask for _, _, mask in units])
    model_maps, untrained_maps, crops, groups, names = [], [], [], [], []
    for key in dict.fromkeys(k for k, _, _ in units):
        rows = [i for k, i, _ in units if k == key]
        records = joint_results[key]
        model_maps += list(records.attrs["attention"][rows])
        untrained = untrained_copy(joint_models[key], seed)
        untrained_maps += list(attention_maps(untrained, records.attrs["crops"][rows]))
        crops += list(records.attrs["crops"][rows])
        groups += [str(records["path"].iloc[i]) for i in rows]
        names += [f"{key}, {report_caption(records['path'].iloc[i])}" for i in rows]
    block = localisation_block(
        model_maps,
        masks,
        untrained_maps=untrained_maps,
        groups=groups,
        unit="crop",
        n_boot=int(n_boot),
        seed=int(seed),
    )
    block["models"] = sorted(dict.fromkeys(k for k, _, _ in units))
    prior = center_prior_maps(masks)
    shuffled = shuffled_maps(model_maps, int(seed), groups)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    items = []
    for i in np.argsort(-areas, kind="stable")[: int(panels)]:
        maps = {
            "model": model_maps[i],
            "untrained": untrained_maps[i],
            "centre prior": prior[i],
            "shuffled": shuffled[i],
        }
        png = reports.localisation_panel_png(crops[i], maps, mask=masks[i])
        items.append((png, f"{names[i]}: attention beside the controls (erosion outlined)"))
    return block, items
