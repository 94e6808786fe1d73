"""Evidence hotspots (§3) and the 54-view test-time augmentation (§4) of SpineNet.

Evidence hotspots: for a task t and class c, the saliency of Simonyan et al. |dy_c/dx| taken per
input slice (a 112 x 224 x 9 map, not the maximum over channels as for RGB), where y_c is the
UNNORMALISED class score (the `<task>_fc8` layer). The map is averaged over randomly augmented
copies of the volume (the training augmentation, `spinenet.augment`), each map first taken back to
the frame of the original volume by inverting its augmentation; the paper finds that aggressive
augmentation localises the hotspots better.

Test-time augmentation: the average of the softmax outputs over 54 views of each volume: 9 patches
(the centre and the 8 shifted by +-16 pixels in x and/or y), each with and without the slice-wise
reflection, each with the 9-slice window moved by -1, 0 and +1 slices. The views need context
around the 112 x 224 x 9 volume: pass the `(144, 256, 11)` volumes of
`spinenet.data.load_volumes(records, context=True)`, which are cut from the series with 16 more
pixels and one more slice on every side. Plain `(112, 224, 9)` volumes are zero-padded instead
(zeros are what the training augmentation shifts in, so the model has seen such borders).

Reference:
    Paper 002, §3 "Evidence Hotspots", Fig. 3; §4 test-time augmentation.
    Simonyan, Vedaldi, Zisserman, "Deep inside convolutional networks", ICLR workshop 2014.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import tensorflow as tf

from common import phantom_truth
from common.inference import compiled_forward
from spinenet.augment import VolumeAugmentConfig
from spinenet.augment import augment_volumes
from spinenet.augment import invert_maps
from spinenet.augment import sample_params
from spinenet.model import task_names


def _check_task(model, task):
    tasks = task_names(model)
    if task not in tasks:
        raise ValueError(f"Unknown task '{task}'. Available: {tasks}")


def _score_model(model, task):
    return keras.Model(model.input, model.get_layer(f"{task}_fc8").output, name=f"{task}_scores")


def saliency(model, volumes, task, class_index) -> np.ndarray:
    """|dy_c / dx| per voxel for a batch of volumes (y_c: unnormalised score of `class_index`).

    Args:
        model: a SpineNet model (`build_model`).
        volumes: `(n, 112, 224, 9)` float volumes.
        task: task name (model output).
        class_index: the class c, an int or one per volume.

    Returns:
        float32 `(n, 112, 224, 9)`: the absolute gradient, kept per slice.
    """
    _check_task(model, task)
    scores = _score_model(model, task)
    x = tf.convert_to_tensor(np.asarray(volumes, dtype=np.float32))
    classes = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (x.shape[0],))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = scores(x, training=False)
        picked = tf.gather(y, classes, axis=1, batch_dims=1)
        total = tf.reduce_sum(picked)
    return np.abs(tape.gradient(total, x).numpy())


def evidence_hotspots(
    model,
    volume,
    task,
    *,
    n_augment=16,
    seed=0,
    class_index=None,
    augment=None,
    batch_size=8,
) -> np.ndarray:
    """The evidence hotspot map of one disc volume for one task (§3).

    Args:
        model: a SpineNet model (`build_model` or a loaded one).
        volume: `(112, 224, 9)` disc volume in [0, 1].
        task: task name, e.g. `"lower_endplate"`.
        n_augment: number of randomly augmented copies whose maps are averaged (0: the plain
            saliency of the volume itself).
        seed: seed of the augmentation draws.
        class_index: the class whose score is explained; default: the class the model predicts
            for the un-augmented volume.
        augment: a `spinenet.augment.VolumeAugmentConfig` (default: the paper's ranges).
        batch_size: copies per gradient computation.

    Returns:
        float32 `(112, 224, 9)` map in the frame of `volume`, >= 0 (unnormalised).
    """
    _check_task(model, task)
    volume = np.asarray(volume, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if volume.shape != expected:
        raise ValueError(f"volume must have shape {expected}, got {volume.shape}")
    if class_index is None:
        probs = model(volume[None], training=False)[task]
        class_index = int(np.argmax(np.asarray(probs)[0]))
    if int(n_augment) <= 0:
        return saliency(model, volume[None], task, class_index)[0]
    augment = augment or VolumeAugmentConfig()
    params = sample_params(np.random.default_rng(seed), augment, int(n_augment))
    total = np.zeros(volume.shape, dtype=np.float64)
    for start in range(0, int(n_augment), int(batch_size)):
        part = {k: v[start : start + batch_size] for k, v in params.items()}
        copies = augment_volumes(volume, part)
        maps = saliency(model, copies, task, class_index)
        total += invert_maps(maps, part).sum(axis=0)
    return (total / int(n_augment)).astype(np.float32)


def tta_views(shift_px=16, slice_shift=1):
    """The test-time views: list of `(dy, dx, dz, reflect)` (54 with the defaults, §4).

    `dy, dx` move the 112 x 224 patch by -shift, 0 or +shift pixels (the centre and its 8
    neighbours), `dz` moves the slice window by -1, 0, +1, and `reflect` reverses the slice order.
    """
    offsets = (-int(shift_px), 0, int(shift_px)) if shift_px else (0,)
    dzs = tuple(range(-int(slice_shift), int(slice_shift) + 1))
    return [
        (dy, dx, dz, reflect)
        for dy, dx in itertools.product(offsets, offsets)
        for reflect in (False, True)
        for dz in dzs
    ]


def predict_tta(model, volumes, *, tta=True, shift_px=16, slice_shift=1, batch_size=32) -> dict:
    """Class probabilities per task, averaged over the 54 test-time views (or the centre only).

    Args:
        model: a SpineNet model.
        volumes: `(N, 112 + 2*shift_px, 224 + 2*shift_px, 9 + 2*slice_shift)` context volumes
            (`load_volumes(..., context=True)`), or plain `(N, 112, 224, 9)` volumes (zero-padded).
        tta: False predicts the centre view only (the paper's "TTA off").
        shift_px: patch offset in pixels (16).
        slice_shift: slice-window offset (1).
        batch_size: views per forward pass (54: the views of one volume at a time).

    Returns:
        dict task -> float32 `(N, classes)` probabilities.
    """
    height, width, slices = (int(v) for v in model.input_shape[1:])
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim == 3:
        volumes = volumes[None]
    if volumes.ndim != 4:
        raise ValueError(f"volumes must be (N, H, W, S), got shape {volumes.shape}")
    margin_y = (volumes.shape[1] - height) // 2
    margin_x = (volumes.shape[2] - width) // 2
    margin_z = (volumes.shape[3] - slices) // 2
    if (margin_y, margin_x, margin_z) == (0, 0, 0) and tta:
        volumes = np.pad(
            volumes,
            [(0, 0), (shift_px, shift_px), (shift_px, shift_px), (slice_shift, slice_shift)],
        )
        margin_y = margin_x = shift_px
        margin_z = slice_shift
    if tta and (margin_y < shift_px or margin_x < shift_px or margin_z < slice_shift):
        raise ValueError(
            f"volumes of shape {volumes.shape[1:]} have too little context for views shifted by "
            f"{shift_px} px and {slice_shift} slices around {(height, width, slices)}"
        )
    if min(margin_y, margin_x, margin_z) < 0 or any(
        (volumes.shape[i + 1] - size) % 2 for i, size in enumerate((height, width, slices))
    ):
        raise ValueError(
            f"volumes of shape {volumes.shape[1:]} do not centre a {(height, width, slices)} view"
        )
    views = tta_views(shift_px, slice_shift) if tta else [(0, 0, 0, False)]
    tasks = task_names(model)
    # All views of a volume go through the model together (batches of `batch_size` views).
    pending, owners = [], []
    sums = {}
    forward = compiled_forward(model)  # one trace for the full batches, one for the last

    def flush():
        out = forward(np.stack(pending))
        for task in tasks:
            probs = np.asarray(out[task], dtype=np.float64)
            if task not in sums:
                sums[task] = np.zeros((len(volumes), probs.shape[1]))
            np.add.at(sums[task], np.asarray(owners), probs)
        pending.clear()
        owners.clear()

    for index, volume in enumerate(volumes):
        for dy, dx, dz, reflect in views:
            y0, x0, z0 = margin_y + dy, margin_x + dx, margin_z + dz
            view = volume[y0 : y0 + height, x0 : x0 + width, z0 : z0 + slices]
            pending.append(view[..., ::-1] if reflect else view)
            owners.append(index)
            if len(pending) == int(batch_size):
                flush()
    if pending:
        flush()
    return {task: (sums[task] / len(views)).astype(np.float32) for task in tasks}


def hotspot_overlay(volume, hotspots, slices=(1, 4, 7)) -> np.ndarray:
    """An RGB picture of chosen slices (top row) and their hotspots in red over them (bottom row).

    Args:
        volume: `(H, W, S)` disc volume in [0, 1].
        hotspots: `(H, W, S)` map from `evidence_hotspots`.
        slices: slice indices to show (the paper's Fig. 3 shows the 2nd and 8th).

    Returns:
        uint8 `(2 H, len(slices) W, 3)`.
    """
    volume = np.clip(np.asarray(volume, dtype=np.float32), 0, 1)
    heat = np.asarray(hotspots, dtype=np.float32)
    top = float(np.percentile(heat, 99.5)) or 1.0
    heat = np.clip(heat / top, 0, 1)
    rows = [[], []]
    for k in slices:
        gray = np.repeat(volume[..., k, None], 3, axis=-1)
        rows[0].append(gray)
        overlay = gray * (1 - 0.7 * heat[..., k, None])
        overlay[..., 0] += 0.7 * heat[..., k]
        rows[1].append(overlay)
    picture = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    return np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)


def default_explained_class(probabilities) -> int:
    """The class whose evidence `predict --explain` shows for one disc and task.

    Binary tasks (endplate defects, marrow changes): class 1, the evidence for the pathology, as
    in the paper's Fig. 3 (pathological examples). Graded tasks (Pfirrmann, narrowing): the
    predicted class.

    Args:
        probabilities: the task's class probabilities for the disc, shape `(classes,)`.
    """
    probabilities = np.asarray(probabilities).ravel()
    return 1 if probabilities.size == 2 else int(np.argmax(probabilities))


def task_hotspots(
    model, volume, classes, *, n_augment=16, seed=0, augment=None, batch_size=8
) -> dict:
    """The evidence hotspots of several tasks of one volume from the same augmented copies.

    Equals `evidence_hotspots(model, volume, task, class_index=classes[task], n_augment=...,
    seed=...)` for every task, with one forward pass per batch of copies shared by the tasks.

    Args:
        model: a SpineNet model.
        volume: `(112, 224, 9)` disc volume.
        classes: dict task -> class index whose unnormalised score is differentiated.
        n_augment: randomly augmented copies per map (0: the plain saliency).
        seed: seed of the augmentation draws.
        augment: a `VolumeAugmentConfig` (default: the paper's ranges).
        batch_size: copies per gradient computation.

    Returns:
        dict task -> float32 `(112, 224, 9)` map in the frame of `volume`.
    """
    for task in classes:
        _check_task(model, task)
    volume = np.asarray(volume, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if volume.shape != expected:
        raise ValueError(f"volume must have shape {expected}, got {volume.shape}")
    tasks = list(classes)
    scores = keras.Model(
        model.input, {t: model.get_layer(f"{t}_fc8").output for t in tasks}, name="task_scores"
    )

    def maps_of(copies):
        x = tf.convert_to_tensor(copies)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = scores(x, training=False)
            picked = {t: tf.reduce_sum(y[t][:, int(classes[t])]) for t in tasks}
        out = {t: np.abs(tape.gradient(picked[t], x).numpy()) for t in tasks}
        del tape
        return out

    if int(n_augment) <= 0:
        return {t: m[0] for t, m in maps_of(volume[None]).items()}
    augment = augment or VolumeAugmentConfig()
    params = sample_params(np.random.default_rng(seed), augment, int(n_augment))
    totals = {t: np.zeros(volume.shape, dtype=np.float64) for t in tasks}
    for start in range(0, int(n_augment), int(batch_size)):
        part = {k: v[start : start + batch_size] for k, v in params.items()}
        for task, maps in maps_of(augment_volumes(volume, part)).items():
            totals[task] += invert_maps(maps, part).sum(axis=0)
    return {t: (totals[t] / int(n_augment)).astype(np.float32) for t in tasks}


def hotspot_figure(volume, hotspots, *, titles=None, slices=(1, 4, 7)) -> np.ndarray:
    """One picture of a disc's evidence hotspots: its slices on top, one row per task below.

    Args:
        volume: `(H, W, S)` disc volume in [0, 1].
        hotspots: dict task -> `(H, W, S)` map (each row is scaled by its own 99.5th percentile).
        titles: optional dict task -> row label (default: the task name); the top row is labelled
            with the slice numbers.
        slices: slice indices shown (0-based; the paper's Fig. 3 shows the 2nd and 8th: 1 and 7).

    Returns:
        uint8 RGB `((1 + tasks) * H, len(slices) * W, 3)`: hotspots in red over the slices.
    """
    import cv2

    volume = np.clip(np.asarray(volume, dtype=np.float32), 0, 1)
    titles = titles or {}

    def label(picture, text):
        font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.42
        (width, height), base = cv2.getTextSize(text, font, size, 1)
        cv2.rectangle(picture, (0, 0), (width + 8, height + base + 6), (0, 0, 0), cv2.FILLED)
        cv2.putText(picture, text, (4, height + 3), font, size, (255, 255, 0), 1, cv2.LINE_AA)
        return picture

    gray = [np.repeat(volume[..., k, None], 3, axis=-1) for k in slices]
    top = np.round(np.concatenate(gray, axis=1) * 255).astype(np.uint8)
    rows = [label(np.ascontiguousarray(top), "slices " + ", ".join(str(k + 1) for k in slices))]
    for task, heat in hotspots.items():
        heat = np.asarray(heat, dtype=np.float32)
        scale = float(np.percentile(heat, 99.5)) or 1.0
        heat = np.clip(heat / scale, 0, 1)
        panels = []
        for k, base in zip(slices, gray):
            overlay = base * (1 - 0.7 * heat[..., k, None])
            overlay[..., 0] += 0.7 * heat[..., k]
            panels.append(overlay)
        row = np.round(np.clip(np.concatenate(panels, axis=1), 0, 1) * 255).astype(np.uint8)
        rows.append(label(np.ascontiguousarray(row), titles.get(task, task)))
    return np.concatenate(rows, axis=0)


# ------------------------------------------------------------------ localisation (issue 15.1)

#: Lesion kind of the phantom truth -> the task whose 'abnormal' hotspot should find it.
LESION_TASKS = {
    "upper_endplate_defect": "upper_endplate",
    "lower_endplate_defect": "lower_endplate",
    "upper_marrow_change": "upper_marrow",
    "lower_marrow_change": "lower_marrow",
}
#: At most this many discs with a drawn lesion are scored per evaluation (seeded subset).
MAX_DISCS = 16
#: Augmented copies per hotspot map of the untrained control (the model's maps use the run's
#: `hotspot_copies`): the control's maps are only compared on average, and its cost is kept small.
CONTROL_COPIES = 4
#: Slices drawn in the report (the largest lesions first).
PANELS = 3


def untrained_copy(model, seed=0):
    """The same architecture with fresh weights (seeded), the `untrained` control.

    The input means (`mean_subtraction`, fixed preprocessing computed from the training split,
    not learnt) are copied from `model`, so that the control differs in its learnt weights only.
    """
    fresh = phantom_truth.untrained_copy(model, seed)
    try:
        fresh.get_layer("mean_subtraction").set_weights(
            model.get_layer("mean_subtraction").get_weights()
        )
    except ValueError:  # a model without the layer
        pass
    return fresh


def lesion_slices(
    model,
    records,
    truth_root,
    *,
    copies=16,
    control_copies=CONTROL_COPIES,
    augment=None,
    max_discs=MAX_DISCS,
    seed=0,
):
    """The evidence hotspots of the model and of an untrained copy on every lesion slice.

    Every disc of `records` with a drawn lesion (`spinenet.synthetic`: endplate defects, marrow
    changes) gets the hotspot (§3) of the task that grades that lesion, for the class 'abnormal'
    (as Fig. 3); each slice of the disc volume that the lesion reaches is one unit: the slice of
    the hotspot against the slice of the lesion mask, grouped by disc.

    Args:
        model: a SpineNet model.
        records: phantom disc records (`spinenet.data.read_dataset` on a phantom data set; records
            without a series path are skipped).
        truth_root: the phantom data set folder (holding `_phantom_truth/`).
        copies: augmented copies per map of the model (the run's `hotspot_copies`).
        control_copies: augmented copies per map of the untrained control.
        augment: the `VolumeAugmentConfig` of the copies (default: the paper's ranges).
        max_discs: cap on the discs scored (a seeded random subset when more have a lesion).
        seed: seed of the subset, the untrained weights and the copies.

    Returns:
        dict of equal-length lists, one entry per lesion slice: `model` and `untrained` (the
        hotspot slices, `(112, 224)`), `masks` (bool lesion slices), `groups` (the disc),
        `slices` (the image slices), `names` (captions); and `discs` / `tasks`: how many discs and
        which tasks were scored.
    """
    from pathlib import Path

    from spinenet.synthetic import read_truth_index
    from spinenet.synthetic import truth_volumes

    tasks = set(task_names(model))
    index = read_truth_index(truth_root)
    index = index[[LESION_TASKS.get(kind) in tasks for kind in index["kind"]]]
    drawn = {(Path(p).name, int(label)) for p, label in zip(index["image"], index["ivd_label"])}
    discs = []  # the discs with a drawn lesion that one of the model's tasks grades
    for record in records.to_dict("records"):
        path = record.get("image_path")
        if isinstance(path, str) and (Path(path).name, int(record["ivd_label"])) in drawn:
            discs.append(record)
    order = np.random.default_rng([int(seed), 15]).permutation(len(discs))[: int(max_discs)]
    units = {"model": [], "untrained": [], "masks": [], "groups": [], "slices": [], "names": []}
    untrained = untrained_copy(model, seed) if len(order) else None
    scored_tasks = set()
    for index in sorted(int(i) for i in order):
        record = discs[index]
        volume, masks, _ = truth_volumes(truth_root, record)
        lesions = {
            kind: mask
            for kind, mask in masks.items()
            if LESION_TASKS.get(kind) in tasks and mask.any()
        }
        if not lesions:
            continue
        classes = {LESION_TASKS[k]: 1 for k in lesions}
        options = {"seed": int(seed) + index, "augment": augment}
        maps = task_hotspots(model, volume, classes, n_augment=int(copies), **options)
        blind = task_hotspots(untrained, volume, classes, n_augment=int(control_copies), **options)
        level = record.get("level") if isinstance(record.get("level"), str) else ""
        name = f"{Path(record['image_path']).name} {level}".strip()
        for kind, mask in lesions.items():
            task = LESION_TASKS[kind]
            scored_tasks.add(task)
            for k in np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0)):
                units["model"].append(maps[task][..., k])
                units["untrained"].append(blind[task][..., k])
                units["masks"].append(mask[..., k])
                units["groups"].append(f"{record['image_path']}#{record['ivd_label']}")
                units["slices"].append(volume[..., k])
                units["names"].append(f"{name}, {kind.replace('_', ' ')}, slice {k + 1}")
    units["discs"] = int(len(order))
    units["tasks"] = sorted(scored_tasks)
    return units


def slice_localisation(units, *, seed=0, n_boot=1000, panels=PANELS):
    """The `localisation` block of `lesion_slices`' units, and a few report panels.

    Args:
        units: the dict `lesion_slices` returns (its `model` list may be replaced by other maps,
            e.g. a control, to see the check fail).
        seed: seed of the shuffle and the bootstrap.
        n_boot: bootstrap resamples.
        panels: how many slices to draw (model beside the controls, lesion outlined).

    Returns:
        `(block, panels)`: the `common.localisation.localisation_block` dict (unit "slice", groups
        = discs) with `discs` and `tasks` added, and a list of `(png, caption)`; `(None, [])` when
        fewer than two lesion slices were found.
    """
    from common import reports
    from common.localisation import center_prior_maps
    from common.localisation import localisation_block
    from common.localisation import shuffled_maps

    if len(units["masks"]) < 2:
        return None, []
    masks = np.stack(units["masks"])
    block = localisation_block(
        units["model"],
        masks,
        untrained_maps=units["untrained"],
        groups=units["groups"],
        unit="slice",
        n_boot=int(n_boot),
        seed=int(seed),
    )
    block["discs"] = int(units["discs"])
    block["tasks"] = list(units["tasks"])
    prior = center_prior_maps(masks)
    shuffled = shuffled_maps(list(units["model"]), int(seed), units["groups"])
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    items = []
    for i in np.argsort(-areas, kind="stable")[: int(panels)]:
        maps = {
            "model": units["model"][i],
            "untrained": units["untrained"][i],
            "centre prior": prior[i],
            "shuffled": shuffled[i],
        }
        png = reports.localisation_panel_png(units["slices"][i], maps, mask=masks[i])
        items.append((png, f"{units['names'][i]}: hotspot beside the controls (lesion outlined)"))
    return block, items


def hotspot_localisation(model, records, truth_root, *, seed=0, n_boot=1000, **options):
    """`lesion_slices` then `slice_localisation`: what `evaluate` adds on phantoms (issue 15.1).

    Args:
        model, records, truth_root, seed: as `lesion_slices`.
        n_boot: bootstrap resamples.
        **options: `copies`, `control_copies`, `augment`, `max_discs` of `lesion_slices`.

    Returns:
        `(block, panels)` of `slice_localisation`.
    """
    units = lesion_slices(model, records, truth_root, seed=seed, **options)
    return slice_localisation(units, seed=seed, n_boot=n_boot)
