"""Stage 1: RetinaNet finger/toe/wrist detectors (keras-hub) and their evaluation (AP at IoU 0.6).

Two detectors (§3.1, §4.2): hands with 6 classes (thumb, finger1-4, wrist) and feet with 5 (toe,
finger1-4). Each is `keras_hub.models.RetinaNetObjectDetector` over a ResNet-50 encoder built from
its layer configuration (`keras_hub.models.ResNetBackbone`, bottleneck blocks 3-4-6-3, no preset,
no download) with a feature pyramid P3-P7. `compile_detector` sets focal loss (alpha 0.25,
gamma 2) for the classes and keras-hub's Huber loss for the boxes. Boxes are `xyxy` in pixels of
the resized image.

Images are resized as keras-retinanet (the paper's implementation) does: the shorter side to
`image_min_side` (1,000) unless the longer side would then exceed `image_max_side` (1,400), in which
case the longer side is set to 1,400 (§4.2.1). The gray film is repeated into three channels and
normalised with the ImageNet mean and standard deviation (what a COCO/ImageNet-pretrained ResNet
expects; a local weights file can be given).

Anchors: keras-hub's defaults, which are keras-retinanet's: sizes 32-512 on P3-P7, three scales
per octave, aspect ratios 0.5, 1 and 2. The paper does not list its anchor configuration. Note that
keras-hub 0.32's `AnchorGenerator` makes an anchor `sqrt(ratio)` times the size high and
`1/sqrt(ratio)` wide, so its ratio is height/width (its docstring says width/height); the demo
presets use 1, 2 and 4, tall anchors for long, narrow fingers (with 0.25-0.5 the thin finger boxes
matched no anchor at IoU 0.5 and the demo detector never learned them).

`FingerDetector` is the keras-hub class with two changes: `compile` also accepts Keras' `loss=`
dict, which is what the legacy `.h5` loader passes when it restores a compiled model, so a saved
detector reloads with plain `keras.models.load_model` after `import deepra`; and `train_on_batch`
/ `test_on_batch` take the `{"boxes", "labels"}` target dict (keras-hub 0.32's fail on it).
Training must go through the model's own `compute_loss` (`fit`, `train_on_batch`): it matches
boxes to anchors with the label encoder; a generic loop that applies per-output losses to `y` does
not work for detectors.

Resized films are zero-padded (bottom, right) to multiples of 2^max_level (128 for P7), because
the feature pyramid adds each upsampled level to the next finer one.

Reference:
    Chaturvedi, "DeepRA", §3.1, §4.2, Table 1; Lin et al., "Focal loss for dense object detection",
    ICCV 2017; keras-retinanet `compute_resize_scale` and `_compute_ap` (VOC all-point AP).
"""

from __future__ import annotations

import copy
import math

import cv2
import keras
import keras_hub
import numpy as np
import pandas as pd
from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

from common.options import look_up_option
from deepra.presets import DETECTOR_PRESETS
from deepra.presets import TABLE1_AP  # noqa: F401  (re-exported for deepra.evaluate)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# keras-hub's ResNet-50 (v1) layer configuration ("resnet_50_imagenet" preset, built from scratch).
RESNET50_CONFIG = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 128, 256, 512],
    "stackwise_num_blocks": [3, 4, 6, 3],
    "stackwise_num_strides": [1, 2, 2, 2],
    "block_type": "bottleneck_block",
    "use_pre_activation": False,
}
# ResNet-50 without its classifier: 23,561,152 parameters (keras-hub preset metadata).
RESNET50_PARAMS = 23_561_152

# A two-stack ResNet for tests and phantoms: P2-P4, trains a step in seconds on a CPU.
TINY_RESNET_CONFIG = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 64, 64],
    "stackwise_num_blocks": [1, 1, 1],
    "stackwise_num_strides": [1, 2, 2],
    "block_type": "basic_block",
    "use_pre_activation": False,
}

#: The paper's start (§4.2.1: "ResNet50 ... pretrained on COCO"; §4.3.1: EfficientNets pretrained
#: on ImageNet): `--weights coco` loads both.
PAPER_WEIGHTS = "coco"


@keras.saving.register_keras_serializable(package="deepra")
class FingerDetector(keras_hub.models.RetinaNetObjectDetector):
    """`keras_hub.models.RetinaNetObjectDetector` whose `compile` also takes Keras' `loss=` dict.

    Keras' legacy `.h5` loader restores a compiled model with `compile(loss={...}, ...)`; the
    keras-hub task only knows `box_loss` and `classification_loss`, so the dict's
    `bbox_regression` and `cls_logits` entries are passed on as those. `train_on_batch` and
    `test_on_batch` accept the `{"boxes", "labels"}` target dict (keras-hub 0.32's do not).

    Args:
        As `keras_hub.models.RetinaNetObjectDetector`.
    """

    def compile(
        self,
        optimizer="auto",
        box_loss="auto",
        classification_loss="auto",
        metrics=None,
        loss=None,
        **kwargs,
    ):
        if isinstance(loss, dict):
            box_loss = loss.get("bbox_regression", box_loss)
            classification_loss = loss.get("cls_logits", classification_loss)
        elif loss is not None:
            raise ValueError(
                "FingerDetector.compile takes `box_loss` and `classification_loss`, or `loss` as a "
                f"dict with keys 'bbox_regression' and 'cls_logits'. Received loss={loss!r}"
            )
        loss_weights = kwargs.pop("loss_weights", None)
        if isinstance(loss_weights, dict):
            kwargs["loss_weights"] = {
                "bbox_regression": float(loss_weights.get("bbox_regression", 1.0)),
                "cls_logits": float(loss_weights.get("cls_logits", 1.0)),
            }
        super().compile(
            optimizer=optimizer,
            box_loss=box_loss,
            classification_loss=classification_loss,
            metrics=metrics,
            **kwargs,
        )

    def _batch_arguments(self, x, y, sample_weight):
        # keras-hub 0.32's PipelineModel converts `y` with one convert_to_tensor call, which fails
        # for the {"boxes", "labels"} dict a detector trains on; convert leaf by leaf instead.
        data = self.preprocess_samples(x, y, sample_weight)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        convert = keras.ops.convert_to_tensor
        x = keras.tree.map_structure(convert, x)
        y = None if y is None else keras.tree.map_structure(convert, y)
        if sample_weight is not None:
            sample_weight = keras.tree.map_structure(convert, sample_weight)
        return x, y, sample_weight

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._batch_arguments(x, y, sample_weight)
        return keras.Model.train_on_batch(self, x, y, sample_weight, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._batch_arguments(x, y, sample_weight)
        return keras.Model.test_on_batch(self, x, y, sample_weight, **kwargs)


# Nested keras-hub objects of a saved detector, by the bare class names a legacy `.h5` file uses.
KERAS_HUB_OBJECTS = {
    cls.__name__: cls
    for cls in (
        keras_hub.models.RetinaNetObjectDetector,
        keras_hub.models.RetinaNetBackbone,
        keras_hub.models.ResNetBackbone,
        keras_hub.layers.AnchorGenerator,
        keras_hub.layers.NonMaxSuppression,
        RetinaNetLabelEncoder,
        FingerDetector,
    )
}


def register_keras_hub_objects():
    """Makes the detector's keras-hub classes known by bare name to `keras.models.load_model`."""
    keras.saving.get_custom_objects().update(KERAS_HUB_OBJECTS)


def detector_config(preset="paper-hand", **overrides):
    """The configuration dict of a detector preset with `overrides` applied.

    Args:
        preset: one of `DETECTOR_PRESETS`.
        **overrides: keys of the preset's dict (e.g. `image_min_side=600`).

    Returns:
        dict (a copy).
    """
    preset = look_up_option(preset, DETECTOR_PRESETS)  # hyphens or underscores (common.options)
    config = copy.deepcopy(DETECTOR_PRESETS[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"Unknown override '{unknown[0]}'. Available: {sorted(config)}")
    config.update(copy.deepcopy(overrides))
    if config["class_names"] is not None:
        config["num_classes"] = len(config["class_names"])
    if not 0 < config["image_min_side"] <= config["image_max_side"]:
        raise ValueError(
            "image_min_side must be positive and at most image_max_side. Received: "
            f"{config['image_min_side']}, {config['image_max_side']}"
        )
    return config


def build_detector(preset="paper-hand", **overrides):
    """Builds a RetinaNet finger/toe/wrist detector (not compiled, random weights unless given).

    Args:
        preset: "paper-hand", "paper-foot" (ResNet-50, P3-P7, images 1000/1400) or "demo-hand",
            "demo-foot" (a two-stack ResNet, P3-P4, images 192/240).
        **overrides: configuration keys, e.g. `weights="detector.weights.h5"` (a local file of this
            detector's weights) or `encoder_weights=...` (a local file of the ResNet encoder's).

    Returns:
        `FingerDetector` (a `keras_hub.models.RetinaNetObjectDetector`) named after the preset;
        `model.deepra_config` holds the configuration.
    """
    config = detector_config(preset, **overrides)
    if config["encoder"] == "resnet50":
        encoder_config = RESNET50_CONFIG
    elif config["encoder"] == "tiny-resnet":
        encoder_config = TINY_RESNET_CONFIG
    else:
        raise ValueError(
            f"Unknown encoder '{config['encoder']}'. Available: ['resnet50', 'tiny-resnet']"
        )
    encoder = keras_hub.models.ResNetBackbone(
        **encoder_config, image_shape=(None, None, 3), name="encoder"
    )
    if config["encoder_weights"]:
        encoder.load_weights(config["encoder_weights"])
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder,
        min_level=config["min_level"],
        max_level=config["max_level"],
        use_p5=config["use_p5"],
        image_shape=(None, None, 3),
        name="retinanet_backbone",
    )
    anchor_generator = keras_hub.layers.AnchorGenerator(
        bounding_box_format="xyxy",
        min_level=config["min_level"],
        max_level=config["max_level"],
        num_scales=config["num_scales"],
        aspect_ratios=list(config["aspect_ratios"]),
        anchor_size=config["anchor_size"],
    )
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="xyxy",
        from_logits=True,
        iou_threshold=config["nms_iou_threshold"],
        confidence_threshold=config["confidence_threshold"],
        max_detections=config["max_detections"],
    )
    model = FingerDetector(
        backbone=backbone,
        num_classes=config["num_classes"],
        bounding_box_format="xyxy",
        anchor_generator=anchor_generator,
        pre_logits_num_conv_layers=config["pre_logits_num_conv_layers"],
        prediction_decoder=decoder,
        name=f"detector_{config['limb_kind']}",
    )
    if config["pretrained"] == "coco":
        model.weights_record = load_coco_backbone(model, config)
    elif config["pretrained"] is not None:
        raise ValueError(f"Unknown pretrained '{config['pretrained']}'. Available: [None, 'coco']")
    if config["weights"]:
        model.load_weights(config["weights"])
    model.deepra_config = config
    return model


def check_coco_fit(config):
    """Raises `DataError` unless keras-hub's COCO RetinaNet backbone fits a detector configuration.

    `retinanet_resnet50_fpn_coco` is a ResNet-50 v1 (bottleneck blocks 3-4-6-3) with a feature
    pyramid P3-P7 built from C5 (`use_p5=False`, no FPN batch norm): the `paper-hand` and
    `paper-foot` detectors exactly. Its heads predict COCO's classes, so ours start fresh.

    Args:
        config: a detector configuration (`detector_config`).
    """
    fits = (
        config["encoder"] == "resnet50"
        and config["min_level"] == 3
        and config["max_level"] == 7
        and not config["use_p5"]
    )
    if not fits:
        from common.errors import DataError

        raise DataError(
            f"--weights coco: keras-hub's COCO RetinaNet (ResNet-50, P3-P7) does not fit the "
            f"detector {config['limb_kind']} with encoder {config['encoder']}, levels "
            f"P{config['min_level']}-P{config['max_level']}; use the paper preset, or "
            "--weights none"
        )


def load_coco_backbone(model, config):
    """Loads keras-hub's COCO RetinaNet backbone into a detector; returns the load record.

    Args:
        model: a detector from `build_detector` (the paper's ResNet-50 FPN).
        config: its configuration.

    Returns:
        The record (`common.weights.copy_model_weights`): the encoder and pyramid layers loaded,
        the classification and box heads fresh.
    """
    from common.weights import COCO_RETINANET_PRESET
    from common.weights import copy_model_weights
    from common.weights import fetch_coco_backbone
    from common.weights import weighted_layers

    check_coco_fit(config)
    source = fetch_coco_backbone(COCO_RETINANET_PRESET)
    record = copy_model_weights(
        model.backbone, source, spec="coco", source_name=f"keras-hub {COCO_RETINANET_PRESET}"
    )
    inside = {id(layer) for layer in weighted_layers(model.backbone)}
    record["fresh"] += [layer.name for layer in weighted_layers(model) if id(layer) not in inside]
    return record


def compile_detector(model, config=None, optimizer=None):
    """Compiles a detector as §4.2.1: Adam (lr 1e-3), focal loss for the classes, Huber for boxes.

    Classification: `BinaryFocalCrossentropy` with alpha 0.25 and gamma 2 (Lin et al.'s focal
    loss with its class balancing). Boxes: keras-hub's Huber loss on the `center_xywh` deltas,
    weighted by `box_loss_weight`. keras-hub encodes the deltas without keras-retinanet's
    division by 0.2 (`box_variance` 1), so its box loss is ~25x smaller than keras-retinanet's
    for the same error and the boxes were learned slowly: on phantom hands (10 epochs) the weight
    20 gave a validation mAP at IoU 0.6 of about 0.4 where 1 gave about 0.2 (keras-retinanet's
    smooth L1 on deltas / 0.2 was tried earlier: on one batch it fitted the boxes to a mean IoU of
    0.53 in 150 steps, Huber to 0.84).

    Args:
        model: a detector from `build_detector`.
        config: its configuration (default `model.deepra_config`).
        optimizer: an optimizer (default Adam with the configuration's learning rate).

    Returns:
        `model`.
    """
    config = config or model.deepra_config
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(config["learning_rate"]),
        box_loss=keras.losses.Huber(reduction="sum"),
        classification_loss=keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True, reduction="sum"
        ),
        loss_weights={
            "bbox_regression": float(config.get("box_loss_weight", 1.0)),
            "cls_logits": 1.0,
        },
    )
    return model


# ---------------------------------------------------------------------------------------------
# Image preparation


def resize_scale(height, width, min_side, max_side):
    """The scale keras-retinanet applies: shorter side to `min_side` unless the longer exceeds `max_side`.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        min_side: target of the shorter side (1,000 in the paper).
        max_side: cap of the longer side (1,400 in the paper).

    Returns:
        float scale factor.
    """
    smallest, largest = min(height, width), max(height, width)
    scale = min_side / smallest
    if largest * scale > max_side:
        scale = max_side / largest
    return float(scale)


def padded_size(height, width, config):
    """The size a resized film is zero-padded to (bottom and right): multiples of 2^max_level.

    The feature pyramid adds upsampled coarse levels to finer ones, so every level must halve
    the previous one exactly.

    Args:
        height: resized film height.
        width: resized film width.
        config: a detector configuration (`max_level`).

    Returns:
        (padded height, padded width).
    """
    step = 2 ** int(config["max_level"])
    return int(math.ceil(height / step) * step), int(math.ceil(width / step) * step)


def prepare_image(image01, config):
    """Resizes a gray film for a detector and normalises it as an ImageNet-style RGB image.

    The film is resized as keras-retinanet does, zero-padded at the bottom and right to a
    multiple of 2^max_level (`padded_size`), repeated into three channels and normalised with the
    ImageNet mean and standard deviation.

    Args:
        image01: float array `(H, W)` in [0, 1] (as `common.image_io.read_image` returns).
        config: a detector configuration (`image_min_side`, `image_max_side`).

    Returns:
        `(image, scale)`: float32 `(H', W', 3)` and the factor from film pixels to `image` pixels
        (divide predicted boxes by it to get film pixels; padding does not move them).
    """
    image01 = np.asarray(image01, dtype=np.float32)
    if image01.ndim != 2:
        raise ValueError(f"prepare_image expects a gray (H, W) image, got shape {image01.shape}")
    h, w = image01.shape
    scale = resize_scale(h, w, config["image_min_side"], config["image_max_side"])
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image01, (new_w, new_h), interpolation=interpolation)
    pad_h, pad_w = padded_size(new_h, new_w, config)
    resized = np.pad(resized, ((0, pad_h - new_h), (0, pad_w - new_w)))
    rgb = np.repeat(resized[..., None], 3, axis=-1)
    rgb = (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return rgb.astype(np.float32), scale


def pad_targets(boxes_per_image, labels_per_image, max_boxes=None):
    """Pads per-image boxes and class indices into the dense arrays keras-hub trains on.

    Args:
        boxes_per_image: list of `(n_i, 4)` arrays, `xyxy` pixels of the prepared images.
        labels_per_image: list of `(n_i,)` int class indices.
        max_boxes: width of the padded arrays (default the largest n_i, at least 1).

    Returns:
        dict `{"boxes": (B, N, 4) float32, "labels": (B, N) float32}`, padding -1.
    """
    if len(boxes_per_image) != len(labels_per_image):
        raise ValueError("boxes_per_image and labels_per_image differ in length")
    counts = [len(b) for b in boxes_per_image]
    width = max([1, *counts]) if max_boxes is None else int(max_boxes)
    boxes = -np.ones((len(counts), width, 4), np.float32)
    labels = -np.ones((len(counts), width), np.float32)
    for i, (b, c) in enumerate(zip(boxes_per_image, labels_per_image, strict=True)):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        if len(b) > width:
            raise ValueError(f"image {i} has {len(b)} boxes, more than max_boxes={width}")
        boxes[i, : len(b)] = b
        labels[i, : len(b)] = np.asarray(c, np.float32)
    return {"boxes": boxes, "labels": labels}


def decode_per_class(model, raw, image_shape_hw, *, max_per_class=10, box_fusion=False):
    """Decodes raw RetinaNet outputs with NMS per class, as keras-retinanet does.

    keras-hub's `NonMaxSuppression` (what `model.predict` uses) suppresses across classes: it
    keeps one class per box and drops a box that overlaps a more confident box of ANY class by
    more than the IoU threshold. Neighbouring fingers and toes overlap that much, so a finger
    next to a confidently detected one would be lost. Here every class keeps its own boxes
    (`tf.image.combined_non_max_suppression`, keras-retinanet's `class_specific_filter=True`).
    The decoder's IoU threshold, confidence threshold and detection cap are the model's own
    (`model.prediction_decoder`), so a reloaded detector decodes as the trained one.

    Args:
        model: a detector (`FingerDetector` / `RetinaNetObjectDetector`).
        raw: dict with `bbox_regression` (B, A, 4) and `cls_logits` (B, A, C) from `model(x)`.
        image_shape_hw: (H, W) of the (padded) input images.
        max_per_class: boxes kept per class and image.
        box_fusion: replace each kept box by the score-weighted mean of the class's decoded
            anchor boxes that overlap it (IoU > 0.5) and score at least half as high (weighted
            box fusion, Solovyev et al. 2021). A RetinaNet predicts a box from every anchor
            near an object, and the most confident one is not the best placed: on the demo's
            phantom films the fused boxes overlapped the annotations by IoU 0.63 on average
            against 0.54 for the most confident anchor's.

    Returns:
        dict as `model.predict` returns: `boxes` (B, K, 4) xyxy in input pixels, `confidence`,
        `labels`, `num_detections` (numpy arrays).
    """
    import tensorflow as tf

    h, w = (int(v) for v in image_shape_hw)
    anchors = model.anchor_generator(tf.zeros((1, h, w, 3)))
    anchors = tf.concat(list(anchors.values()), axis=0)
    deltas = tf.convert_to_tensor(raw["bbox_regression"], tf.float32)
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors,
        boxes_delta=deltas,
        encoded_format="center_xywh",
        anchor_format=model.anchor_generator.bounding_box_format,
        box_format="xyxy",
        image_shape=(h, w, 3),
    )
    scores = tf.sigmoid(tf.convert_to_tensor(raw["cls_logits"], tf.float32))
    decoder = model.prediction_decoder
    result = tf.image.combined_non_max_suppression(
        tf.expand_dims(boxes, 2),
        scores,
        max_output_size_per_class=int(max_per_class),
        max_total_size=int(decoder.max_detections),
        iou_threshold=float(decoder.iou_threshold),
        score_threshold=float(decoder.confidence_threshold),
        clip_boxes=False,
    )
    kept = result.nmsed_boxes.numpy()
    if box_fusion:
        kept = _fuse_boxes(
            kept,
            result.nmsed_scores.numpy(),
            result.nmsed_classes.numpy().astype(np.int64),
            result.valid_detections.numpy(),
            boxes.numpy(),
            scores.numpy(),
        )
    return {
        "boxes": kept,
        "confidence": result.nmsed_scores.numpy(),
        "labels": result.nmsed_classes.numpy().astype(np.int64),
        "num_detections": result.valid_detections.numpy(),
    }


def _fuse_boxes(kept, kept_scores, labels, counts, boxes, scores, iou=0.5, score_fraction=0.5):
    """Weighted box fusion of every kept detection with its class's anchor boxes around it.

    Args:
        kept: (B, K, 4) boxes kept by NMS; kept_scores, labels: (B, K); counts: (B,).
        boxes: (B, A, 4) every anchor's decoded box; scores: (B, A, C) class probabilities.
        iou: overlap with the kept box an anchor box needs.
        score_fraction: share of the kept box's score an anchor box needs.

    Returns:
        (B, K, 4) fused boxes.
    """
    fused = kept.copy()
    for b in range(kept.shape[0]):
        for k in range(int(counts[b])):
            class_scores = scores[b, :, int(labels[b, k])]
            candidates = np.flatnonzero(class_scores >= score_fraction * float(kept_scores[b, k]))
            if len(candidates) == 0:
                continue
            near = candidates[box_iou(kept[b, k][None], boxes[b, candidates])[0] > iou]
            if len(near) == 0:
                continue
            weights = class_scores[near].astype(np.float64)
            fused[b, k] = (boxes[b, near] * weights[:, None]).sum(0) / weights.sum()
    return fused


def decode_detections(predictions, class_names, scales=None, best_per_class=True):
    """Turns the detector's `predict` output into one table of boxes in film pixels.

    Args:
        predictions: dict from `model.predict` (`boxes` (B, K, 4) xyxy, `confidence` (B, K),
            `labels` (B, K), `num_detections` (B,)).
        class_names: the detector's class names (index -> name).
        scales: per-image factors from `prepare_image` (boxes are divided by them), default 1.
        best_per_class: keep only the most confident box of each class per image (as the paper's
            pipeline does: one crop per finger/toe/wrist).

    Returns:
        pandas DataFrame with columns `image_index, label, score, xmin, ymin, xmax, ymax`.
    """
    boxes = np.asarray(predictions["boxes"], np.float32)
    scores = np.asarray(predictions["confidence"], np.float32)
    labels = np.asarray(predictions["labels"]).astype(np.int64)
    counts = np.asarray(predictions["num_detections"]).astype(np.int64).reshape(-1)
    n_images = boxes.shape[0]
    scales = np.ones(n_images, np.float32) if scales is None else np.asarray(scales, np.float32)
    rows = []
    for i in range(n_images):
        k = int(counts[i])
        for j in range(k):
            label = int(labels[i, j])
            if label < 0 or label >= len(class_names):
                continue
            x0, y0, x1, y1 = (boxes[i, j] / scales[i]).tolist()
            rows.append((i, class_names[label], float(scores[i, j]), x0, y0, x1, y1))
    frame = pd.DataFrame(
        rows, columns=["image_index", "label", "score", "xmin", "ymin", "xmax", "ymax"]
    )
    if best_per_class and len(frame):
        frame = frame.sort_values(["image_index", "score"], ascending=[True, False], kind="stable")
        frame = frame.drop_duplicates(["image_index", "label"], keep="first")
        frame = frame.sort_values(["image_index", "label"], kind="stable")
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Evaluation: average precision per class (VOC all-point interpolation, as keras-retinanet)


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU of two sets of `xyxy` boxes.

    Args:
        boxes_a: `(N, 4)` array.
        boxes_b: `(M, 4)` array.

    Returns:
        `(N, M)` float64 array.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _voc_ap(recall, precision):
    """Area under the precision envelope (all-point interpolation, VOC 2010+)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def average_precision(detections, annotations, iou_threshold=0.6):
    """Average precision of one class over a set of images.

    Detections of all images are ranked by score; each is a true positive when its best-overlapping
    ground-truth box of the same image has IoU >= `iou_threshold` and was not matched before (as
    keras-retinanet's `evaluate`), otherwise a false positive.

    Args:
        detections: list (one per image) of `(n_i, 5)` arrays `xmin, ymin, xmax, ymax, score`.
        annotations: list (one per image) of `(m_i, 4)` ground-truth boxes.
        iou_threshold: the IoU a detection needs (0.6 in Table 1).

    Returns:
        `(ap, num_annotations)`; ap is 0.0 when there are no annotations.
    """
    if len(detections) != len(annotations):
        raise ValueError(
            f"detections cover {len(detections)} images, annotations {len(annotations)}"
        )
    scores, true_pos = [], []
    num_annotations = 0
    for dets, gts in zip(detections, annotations, strict=True):
        dets = np.asarray(dets, np.float64).reshape(-1, 5)
        gts = np.asarray(gts, np.float64).reshape(-1, 4)
        num_annotations += len(gts)
        matched = np.zeros(len(gts), bool)
        order = np.argsort(-dets[:, 4], kind="stable")
        for det in dets[order]:
            scores.append(det[4])
            if len(gts) == 0:
                true_pos.append(0)
                continue
            overlaps = box_iou(det[None, :4], gts)[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou_threshold and not matched[best]:
                matched[best] = True
                true_pos.append(1)
            else:
                true_pos.append(0)
    if num_annotations == 0:
        return 0.0, 0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(true_pos, np.float64)[order]
    fp = 1.0 - tp
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / num_annotations
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _voc_ap(recall, precision), num_annotations


def mean_average_precision(detections, annotations, class_names, iou_threshold=0.6):
    """AP per class and their mean, in the layout of Table 1.

    Args:
        detections: pandas DataFrame with `image, label, score, xmin, ymin, xmax, ymax`.
        annotations: pandas DataFrame with `image, label, xmin, ymin, xmax, ymax` (the truth).
        class_names: classes to evaluate, in the table's order.
        iou_threshold: 0.6 as in Table 1.

    Returns:
        dict {class name: AP, ..., "mAP": mean over the classes that have annotations}.
    """
    for name, frame in (("detections", detections), ("annotations", annotations)):
        needed = {"image", "label", "xmin", "ymin", "xmax", "ymax"} | (
            {"score"} if name == "detections" else set()
        )
        missing = sorted(needed - set(frame.columns))
        if missing:
            raise ValueError(f"{name} lacks the column(s) {missing}")
    images = sorted(set(annotations["image"]) | set(detections["image"]), key=str)
    coords = ["xmin", "ymin", "xmax", "ymax"]
    result = {}
    present = []
    for name in class_names:
        det_c = detections[detections["label"] == name]
        ann_c = annotations[annotations["label"] == name]
        det_by = {k: g for k, g in det_c.groupby("image")}
        ann_by = {k: g for k, g in ann_c.groupby("image")}
        dets = [
            det_by[i][coords + ["score"]].to_numpy(np.float64) if i in det_by else np.zeros((0, 5))
            for i in images
        ]
        gts = [
            ann_by[i][coords].to_numpy(np.float64) if i in ann_by else np.zeros((0, 4))
            for i in images
        ]
        ap, count = average_precision(dets, gts, iou_threshold)
        result[name] = ap
        if count:
            present.append(ap)
    result["mAP"] = float(np.mean(present)) if present else 0.0
    return result


def table1(hand_ap=None, foot_ap=None):
    """Table 1's layout: one row per joint type, hand and foot AP side by side, then the mAP.

    Args:
        hand_ap: dict from `mean_average_precision` for the hand detector (or None).
        foot_ap: the same for the foot detector (or None).

    Returns:
        pandas DataFrame indexed by "Thumb/Toe", "Finger 1".."Finger 4", "Wrist", "Overall mAP".
    """
    rows = [
        ("Thumb/Toe", "thumb", "toe"),
        *[(f"Finger {k}", f"finger{k}", f"finger{k}") for k in range(1, 5)],
        ("Wrist", "wrist", None),
        ("Overall mAP", "mAP", "mAP"),
    ]
    data = {"Hand Model Joint Wise AP": [], "Feet Model Joint Wise AP": []}
    for _, hand_key, foot_key in rows:
        data["Hand Model Joint Wise AP"].append(
            math.nan if hand_ap is None else hand_ap.get(hand_key, math.nan)
        )
        data["Feet Model Joint Wise AP"].append(
            math.nan if foot_ap is None or foot_key is None else foot_ap.get(foot_key, math.nan)
        )
    return pd.DataFrame(data, index=[r[0] for r in rows])
