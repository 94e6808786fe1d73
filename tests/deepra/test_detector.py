"""Stage 1 detectors: keras-hub RetinaNet presets (§4.2), one training step, decoding, AP (Table 1)."""

import keras
import keras_hub
import numpy as np
import pandas as pd
import pytest

from common.image_io import read_image
from common.testing import TestCase
from deepra import data
from deepra.detector import DETECTOR_PRESETS
from deepra.detector import RESNET50_PARAMS
from deepra.detector import TABLE1_AP
from deepra.detector import FingerDetector
from deepra.detector import average_precision
from deepra.detector import compile_detector
from deepra.detector import decode_detections
from deepra.detector import mean_average_precision
from deepra.detector import pad_targets
from deepra.detector import prepare_image
from deepra.detector import resize_scale
from deepra.detector import table1
from deepra.model import build_model
from deepra.model import explain_model

# keras-hub's "retinanet_resnet50_fpn_coco" preset (ResNet-50 FPN, 91 COCO classes) has 34,121,239
# parameters; the classification head's last 3x3 conv has 256*9*C*9 + 9*C = 20,745*C of them.
COCO_RETINANET_PARAMS = 34_121_239
PARAMS_PER_CLASS = 20_745


@pytest.mark.parametrize("preset, classes", [("paper-hand", 6), ("paper-foot", 5)])
def test_paper_detector_spec(preset, classes):
    model = build_model(preset)
    assert isinstance(model, FingerDetector)
    assert model.num_classes == classes  # §4.2: 6 hand classes, 5 foot classes
    assert model.backbone.image_encoder.count_params() == RESNET50_PARAMS
    assert model.count_params() == COCO_RETINANET_PARAMS - PARAMS_PER_CLASS * (91 - classes)
    assert model.backbone.min_level == 3 and model.backbone.max_level == 7
    config = model.deepra_config
    # §4.2.1: min/max side 1000/1400, Adam 1e-3, x0.1 after 4 epochs, early stop 5, batch 8
    assert (config["image_min_side"], config["image_max_side"]) == (1000, 1400)
    assert config["learning_rate"] == 1e-3
    assert (config["reduce_lr_factor"], config["reduce_lr_patience"]) == (0.1, 4)
    assert config["early_stopping_patience"] == 5
    assert config["batch_size"] == 8
    assert config["eval_iou_threshold"] == 0.6  # Table 1


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((2000, 1600), 1000 / 1600),  # shorter side to 1000
        ((3000, 1000), 1400 / 3000),  # longer side capped at 1400
        ((500, 400), 1000 / 400 if 500 * 2.5 <= 1400 else 1400 / 500),
    ],
)
def test_resize_scale(hw, expected):
    assert resize_scale(*hw, 1000, 1400) == pytest.approx(expected)


@pytest.fixture(scope="module")
def demo_detector():
    return compile_detector(build_model("demo-hand"))


def test_demo_detector_trains_and_decodes(demo_detector, phantom_root):
    model = demo_detector
    boxes = data.read_boxes(phantom_root)
    hands = boxes[boxes["image"].str.endswith("-LH.jpg")]
    ds = data.make_detector_dataset(hands, config=model.deepra_config, batch_size=2)
    images, targets = next(iter(ds))
    assert images.shape[0] == 2 and images.shape[-1] == 3
    assert images.shape[1] % 16 == 0 and images.shape[2] % 16 == 0
    assert targets["boxes"].shape[:2] == targets["labels"].shape == (2, 6)
    before = [np.array(w) for w in model.trainable_weights]
    logs = model.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    after = [np.array(w) for w in model.trainable_weights]
    assert sum(not np.allclose(b, a) for b, a in zip(before, after, strict=True)) > 0.9 * len(
        before
    )
    predictions = model.predict(images, verbose=0)
    assert set(predictions) == {"boxes", "confidence", "labels", "num_detections"}
    assert predictions["boxes"].shape == (2, 100, 4)
    table = decode_detections(predictions, model.deepra_config["class_names"], scales=[0.5, 0.5])
    assert list(table.columns) == ["image_index", "label", "score", "xmin", "ymin", "xmax", "ymax"]
    assert not table.duplicated(["image_index", "label"]).any()
    maps = explain_model(model)(images[:1])
    assert {"P3", "P4", "cls_logits", "bbox_regression"} <= set(maps)


@pytest.mark.parametrize("preset", ["demo-hand", "paper-foot"])
def test_anchors_cover_long_narrow_fingers(preset):
    # a finger box is about 4x as high as wide; some anchor must be that tall (IoU >= 0.5 needed)
    config = DETECTOR_PRESETS[preset]
    generator = keras_hub.layers.AnchorGenerator(
        "xyxy",
        config["min_level"],
        config["max_level"],
        config["num_scales"],
        list(config["aspect_ratios"]),
        config["anchor_size"],
    )
    anchors = np.asarray(generator.generate_base_anchors([64.0], list(config["aspect_ratios"])))
    height_over_width = (anchors[:, 3] - anchors[:, 1]) / (anchors[:, 2] - anchors[:, 0])
    tallest = 4.0 if preset.startswith("demo") else 2.0
    assert height_over_width.max() == pytest.approx(tallest, rel=0.05)


def test_prepare_image_scales_boxes(phantom_root):
    config = DETECTOR_PRESETS["demo-hand"]
    film = read_image(sorted(phantom_root.glob("train/PHA*-LH.jpg"))[0])
    image, scale = prepare_image(film, config)
    h, w = round(film.shape[0] * scale), round(film.shape[1] * scale)
    assert max(h, w) <= config["image_max_side"] and min(h, w) <= config["image_min_side"]
    assert image.shape == (-(-h // 16) * 16, -(-w // 16) * 16, 3)  # padded to 2^4 (P4)
    assert abs(image.mean()) < 3.0  # ImageNet-normalised


def test_decode_detections_keeps_best_box_per_class():
    predictions = {
        "boxes": np.array(
            [[[0, 0, 10, 10], [2, 2, 12, 12], [5, 5, 20, 30], [0, 0, 0, 0]]], "float32"
        ),
        "confidence": np.array([[0.6, 0.9, 0.7, -1]], "float32"),
        "labels": np.array([[1, 1, 5, -1]]),
        "num_detections": np.array([3]),
    }
    table = decode_detections(
        predictions, ["thumb", "finger1", "f2", "f3", "f4", "wrist"], scales=[2.0]
    )
    assert table["label"].tolist() == ["finger1", "wrist"]
    np.testing.assert_allclose(
        table.iloc[0][["xmin", "ymin", "xmax", "ymax"]].to_numpy(float), [1, 1, 6, 6]
    )
    assert table.iloc[0]["score"] == pytest.approx(0.9)


def test_pad_targets():
    padded = pad_targets([np.ones((2, 4)), np.zeros((0, 4))], [[0, 3], []])
    assert padded["boxes"].shape == (2, 2, 4)
    assert padded["labels"].tolist() == [[0, 3], [-1, -1]]


@pytest.mark.parametrize(
    "scores_tp, expected",
    [
        # 2 ground-truth boxes; detections ranked 0.9 TP, 0.8 FP, 0.7 TP:
        # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 0.5 * 1 + 0.5 * 2/3
        ([(0.9, True), (0.8, False), (0.7, True)], 0.5 + 0.5 * 2 / 3),
        ([(0.9, True), (0.7, True)], 1.0),
        ([(0.9, False)], 0.0),
        ([(0.9, True)], 0.5),
    ],
)
def test_average_precision_by_hand(scores_tp, expected):
    gts = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    hits = iter(gts)
    dets = []
    for score, tp in scores_tp:
        box = next(hits) if tp else np.array([100, 100, 110, 110], float)
        dets.append([*box, score])
    ap, n = average_precision([np.array(dets)], [gts], iou_threshold=0.6)
    assert n == 2
    assert ap == pytest.approx(expected)


@pytest.mark.parametrize("shift, hit", [(1.0, True), (4.0, False)])
def test_iou_threshold_0_6(shift, hit):
    # a 10x10 box shifted by 1 px has IoU 0.82; by 4 px 0.43 (below 0.6, Table 1's threshold)
    gt = np.array([[0, 0, 10, 10]], float)
    det = np.array([[shift, 0, 10 + shift, 10, 0.9]])
    ap, _ = average_precision([det], [gt], iou_threshold=0.6)
    assert ap == (1.0 if hit else 0.0)


def test_mean_average_precision_and_table1_layout():
    truth = pd.DataFrame(
        [("a", "thumb", 0, 0, 10, 40), ("a", "wrist", 0, 50, 40, 90), ("b", "thumb", 5, 5, 15, 45)],
        columns=["image", "label", "xmin", "ymin", "xmax", "ymax"],
    )
    dets = truth.assign(score=0.9).iloc[[0, 1]]
    result = mean_average_precision(dets, truth, ["thumb", "finger1", "wrist"])
    assert result["thumb"] == pytest.approx(0.5) and result["wrist"] == 1.0
    assert result["finger1"] == 0.0  # no annotations: not in the mean
    assert result["mAP"] == pytest.approx(0.75)
    table = table1(hand_ap=result, foot_ap={"toe": 0.9, "mAP": 0.9})
    assert list(table.index) == [
        "Thumb/Toe",
        "Finger 1",
        "Finger 2",
        "Finger 3",
        "Finger 4",
        "Wrist",
        "Overall mAP",
    ]
    assert table.loc["Wrist", "Hand Model Joint Wise AP"] == 1.0
    assert np.isnan(table.loc["Wrist", "Feet Model Joint Wise AP"])
    # the paper's figures in the same layout (Table 1)
    paper = table1(TABLE1_AP["hand"], TABLE1_AP["foot"])
    assert paper.loc["Overall mAP"].tolist() == [0.981, 0.965]
    assert paper.loc["Finger 3"].tolist() == [0.971, 0.947]


def test_detector_saving_round_trip(demo_detector, tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 96, 128, 3)).astype("float32")
    TestCase().run_model_saving_test(demo_detector, x, tmp_path, fresh_process_import="deepra")


def test_compile_accepts_keras_loss_dict(demo_detector):
    clone = FingerDetector.from_config(demo_detector.get_config())
    clone.compile(
        optimizer="adam",
        loss={
            "bbox_regression": keras.losses.Huber(),
            "cls_logits": keras.losses.BinaryFocalCrossentropy(from_logits=True),
        },
    )
    with pytest.raises(ValueError, match="box_loss"):
        clone.compile(loss="mse")
