"""Does the knee attention mask find the joint space? Scored against content-blind controls (issue 15.1).

The map kneeoa draws is the attention mask A of §3.1 (`explain_model`, `f"{branch}_mask"`). We
score the test branch's mask (`att0` for the paper's multi-loss att0 model and the demo): the branch
the reported grade comes from. Its truth is the phantom's `joint_space` mask, the gap between the
femoral condyles and the tibial plateau in both compartments: the phantoms draw KL from the joint
space width (plus osteophytes and sclerosis at higher grades, which lie at the joint's margins), and
the paper's Fig. 3 shows att0 on the joint. A knee has a joint space at every grade, so every
scored knee counts, KL0 included.

Controls (`common.localisation`): the centre prior (the mean joint-space mask of the other scored
knees), the same architecture with fresh weights (`common.phantom_truth.untrained_copy`, seed
`UNTRAINED_SEED`) run through the same `explain_model`, and another knee's mask.

Reference:
    Górriz et al., "Assessing Knee OA Severity with CNN attention-based end-to-end architectures",
    MIDL 2019, §3.1 and Fig. 3.
"""

from __future__ import annotations

import numpy as np

from common.identifiers import report_caption
from common.inference import compiled_forward
from common.phantom_truth import MAX_SCORED
from common.phantom_truth import match_truth
from common.phantom_truth import read_mask
from common.phantom_truth import score_and_draw
from common.phantom_truth import scored_subset
from common.phantom_truth import untrained_copy
from kneeoa.data import make_dataset
from kneeoa.model import explain_model

LESION_KIND = "joint_space"
UNTRAINED_SEED = 1
MAP_NAME = "attention mask"


def attention_maps(model, records, config, branch, batch_size=32):
    """The knees as the model reads them and `branch`'s attention masks.

    Args:
        model: a KL grader with attention branches.
        records: knee records (`path`, `crop`, `kl`).
        config: the model's configuration (`model_config`).
        branch: the attention branch (`att0`, `att1`, ...).
        batch_size: knees per forward pass.

    Returns:
        `(images (N, H, W), masks (N, h, w))` float32, masks in [0, 1] on the branch's grid.

    Raises:
        KeyError: the model has no such attention branch.
    """
    explainer = compiled_forward(explain_model(model))
    dataset = make_dataset(
        records, config=config, training=False, batch_size=batch_size, cache=False
    )
    images, maps = [], []
    for batch, _ in dataset:
        out = explainer(batch)
        maps.append(np.asarray(out[f"{branch}_mask"])[..., 0])
        images.append(np.asarray(batch)[..., 0])
    return np.concatenate(images), np.concatenate(maps)


def localisation_inputs(model, records, config, *, limit=MAX_SCORED, seed=UNTRAINED_SEED):
    """What the `localisation` block scores: the maps of the model and of its untrained twin, the
    joint-space masks, and the knees, for at most `limit` phantom knees of `records`.

    Args:
        model: the trained grader.
        records: the evaluated knees (`path`, `crop`, `side`, `kl`).
        config: the model's configuration (`test_branch`, `branches`, input pipeline).
        limit: at most this many knees are scored, evenly spread over the split.
        seed: seed of the untrained control's weights.

    Returns:
        dict with `branch`, `maps`, `untrained`, `masks` (bool, on the input grid), `images` and
        `records` (the scored knees), or None when the data carry no phantom truth (a real data
        set) or the model has no attention branch (early fusion is not scored).
    """
    branches = [b for b in config.get("branches", ()) if str(b).startswith("att")]
    if not branches:
        return None
    branch = config["test_branch"] if config["test_branch"] in branches else branches[0]
    sides = records["side"].astype(str).tolist() if "side" in records else None
    root, positions, rows = match_truth(records["path"], LESION_KIND, sides=sides)
    if root is None or len(positions) < 2:
        return None
    keep = scored_subset(len(positions), limit)
    subset = records.iloc[positions[keep]]
    rows = rows.iloc[keep]
    images, maps = attention_maps(model, subset, config, branch)
    _, untrained = attention_maps(untrained_copy(model, seed), subset, config, branch)
    masks = np.stack(
        [
            read_mask(root, rel, size_hw=images.shape[1:3], crop=crop)
            for rel, crop in zip(rows["mask"], subset["crop"], strict=True)
        ]
    )
    return {
        "branch": branch,
        "maps": maps,
        "untrained": untrained,
        "masks": masks,
        "images": images,
        "records": subset,
    }


def localisation(model, records, config, *, limit=MAX_SCORED, seed=UNTRAINED_SEED):
    """The `localisation` block and report panels of a KL grader on phantom knees.

    Args:
        model: the trained grader.
        records: the evaluated knees (`path`, `crop`, `side`, `kl`).
        config: the model's configuration (`test_branch`, `branches`, input pipeline).
        limit: at most this many knees are scored (`common.phantom_truth.MAX_SCORED`).
        seed: seed of the untrained control's weights.

    Returns:
        `(block, panels)`, or None where `localisation_inputs` is None.
    """
    scored = localisation_inputs(model, records, config, limit=limit, seed=seed)
    if scored is None:
        return None
    branch, subset = scored["branch"], scored["records"]
    captions = [
        f"{report_caption(p)} KL{int(k)} {branch}"
        for p, k in zip(subset["path"], subset["kl"], strict=True)
    ]
    return score_and_draw(
        scored,
        captions,
        unit="knee",
        group_column=None,
        branch=branch,
        lesion=LESION_KIND,
        untrained_seed=int(seed),
    )
