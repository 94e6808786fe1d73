"""`--weights imagenet|coco|none|FILE` (common/weights.py) for the five packages, offline.

Keras' download is replaced by a function that returns a file the test wrote from a freshly built
keras.applications model in the format of Keras' "no top" downloads; keras-hub's COCO preset by a
backbone built here. Nothing is downloaded.
"""

import json
import os

import keras
import numpy as np
import pytest

import boneage
import common.weights as W
import kneeoa
import mura
from common.cli import main
from common.weights import read_legacy_h5
from common.weights import write_legacy_h5


def _serve(monkeypatch, files):
    """Replaces Keras' download: `fname -> path` of files written by the test."""
    asked = []

    def fake_get_file(fname, origin, file_hash):
        asked.append((fname, origin))
        return files[fname]

    monkeypatch.setattr(W, "_get_file", fake_get_file)
    return asked


def _assert_trunk_equals_file(layers, path):
    found = read_legacy_h5(path)
    assert len(layers) == len(found)
    for layer, (_, arrays) in zip(layers, found):
        for ours, theirs in zip(layer.get_weights(), arrays):
            np.testing.assert_array_equal(ours, theirs)


def _notop_file(tmp_path, trunk, factory, shape):
    fname = W.IMAGENET_WEIGHTS[trunk][0]
    path = os.fspath(tmp_path / fname)
    write_legacy_h5(factory(include_top=False, weights=None, input_shape=shape), path)
    return fname, path


def test_urls_and_hashes_are_keras_applications_own():
    from keras.src.applications import densenet
    from keras.src.applications import efficientnet
    from keras.src.applications import inception_v3
    from keras.src.applications import resnet
    from keras.src.applications import vgg16

    assert W.IMAGENET_WEIGHTS["vgg16"][1] == vgg16.WEIGHTS_PATH_NO_TOP
    assert W.IMAGENET_WEIGHTS["inception_v3"][1] == inception_v3.WEIGHTS_PATH_NO_TOP
    assert W.IMAGENET_WEIGHTS["densenet169"][1] == densenet.DENSENET169_WEIGHT_PATH_NO_TOP
    assert (
        W.IMAGENET_WEIGHTS["resnet50"][1]
        == resnet.BASE_WEIGHTS_PATH + W.IMAGENET_WEIGHTS["resnet50"][0]
    )
    assert W.IMAGENET_WEIGHTS["resnet50"][2] == resnet.WEIGHTS_HASHES["resnet50"][1]
    for b in ("b3", "b4", "b5"):
        fname, url, md5 = W.IMAGENET_WEIGHTS[f"efficientnet{b}"]
        assert url == efficientnet.BASE_WEIGHTS_PATH + fname
        assert md5 == efficientnet.WEIGHTS_HASHES[b][1]


def test_paper_presets_default_to_the_papers_start():
    from boneage.model import PRETRAINED_PRESETS as BONEAGE
    from deepra.detector import PAPER_WEIGHTS as DEEPRA
    from mura.model import PRETRAINED_PRESETS as MURA
    from spinenet.model import PAPER_WEIGHTS as SPINENET

    assert W.default_spec(None, kneeoa.model.PAPER_WEIGHTS, "paper") == "none"
    assert W.default_spec(None, SPINENET, "paper") == "none"
    assert W.default_spec(None, mura.model.PAPER_WEIGHTS, "paper", paper_presets=MURA) == "imagenet"
    assert W.default_spec(None, boneage.model.PAPER_WEIGHTS, "paper", paper_presets=BONEAGE) == (
        "imagenet"
    )
    assert W.default_spec(None, DEEPRA, "paper") == "coco"
    for default, presets in (("imagenet", MURA), ("imagenet", BONEAGE), ("coco", ("paper",))):
        assert W.default_spec(None, default, "demo", paper_presets=presets) == "none"
    assert W.default_spec("NONE", "imagenet", "paper") == "none"  # the flag wins


def test_kneeoa_vgg16_trunk_equals_the_file(tmp_path, monkeypatch):
    fname, path = _notop_file(tmp_path, "vgg16", keras.applications.VGG16, (32, 32, 3))
    asked = _serve(monkeypatch, {fname: path})
    source = W.pretrained_file("imagenet", "vgg16", what="test")
    assert asked == [(fname, W.IMAGENET_WEIGHTS["vgg16"][1])] and source == path
    config = kneeoa.model.resolve_config(
        "vgg16-att2", image_size_hw=(32, 32), backbone_weights=source
    )
    model = kneeoa.build_model("vgg16-att2", image_size_hw=(32, 32), backbone_weights=source)
    trunk = kneeoa.model.trunk_layer_names(model, config)
    _assert_trunk_equals_file([model.get_layer(n) for n in trunk], path)
    record = W.trunk_record(model, trunk, spec="imagenet", source=source)
    assert record["fresh"] == ["att2_attention", "att2_logits"]
    assert record["url"] == W.IMAGENET_WEIGHTS["vgg16"][1]


def test_mura_densenet169_trunk_equals_the_file(tmp_path, monkeypatch):
    fname, path = _notop_file(tmp_path, "densenet169", keras.applications.DenseNet169, (32, 32, 3))
    _serve(monkeypatch, {fname: path})
    source = W.pretrained_file("imagenet", "densenet169", what="test")
    model = mura.build_model("paper", input_shape=(32, 32, 1), weights=source)
    trunk = [layer for layer in model.layers if layer.weights and layer.name != "abnormal"]
    _assert_trunk_equals_file(trunk, path)


def test_deepra_efficientnet_trunk_equals_the_file(tmp_path, monkeypatch):
    from deepra.joints import build_joint_model
    from deepra.joints import joint_config

    fname, path = _notop_file(
        tmp_path, "efficientnetb3", keras.applications.EfficientNetB3, (32, 32, 3)
    )
    _serve(monkeypatch, {fname: path})
    source = W.pretrained_file("imagenet", "efficientnetb3", what="test")
    model = build_joint_model(
        joint_config("hand-erosion", image_size_hw=(32, 32), backbone_weights=source)
    )
    _assert_trunk_equals_file(W.weighted_layers(model.get_layer("backbone")), path)


def test_deepra_detector_coco_backbone_loaded_heads_fresh(monkeypatch):
    import keras_hub

    from deepra.detector import RESNET50_CONFIG
    from deepra.detector import build_detector

    def fake_preset(preset):
        assert preset == "retinanet_resnet50_fpn_coco"
        encoder = keras_hub.models.ResNetBackbone(**RESNET50_CONFIG, image_shape=(None, None, 3))
        return keras_hub.models.RetinaNetBackbone(
            image_encoder=encoder, min_level=3, max_level=7, use_p5=False
        )

    served = []

    def serve(preset):
        served.append(fake_preset(preset))
        return served[-1]

    monkeypatch.setattr(W, "load_keras_hub_backbone", serve)
    model = build_detector("paper-hand", pretrained="coco")
    record = model.weights_record
    theirs = served[0]
    for ours, other in zip(W.weighted_layers(model.backbone), W.weighted_layers(theirs)):
        for a, b in zip(ours.get_weights(), other.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert len(record["loaded"]) == len(W.weighted_layers(theirs)) and not record["partial"]
    assert {"box_head", "classification_head"} <= set(record["fresh"])
    with pytest.raises(ValueError, match="does not fit"):
        build_detector("demo-hand", pretrained="coco")


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = os.fspath(tmp_path_factory.mktemp("iv3") / W.IMAGENET_WEIGHTS["inception_v3"][0])
    write_legacy_h5(
        keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3)),
        path,
    )
    return path


def test_boneage_inception_v3_trunk_equals_the_file(inception_file):
    overrides = {"channels": 3, "image_size_hw": (75, 75)}
    model = boneage.build_model("baseline", **overrides)
    record = boneage.model.load_imagenet_inception(
        model, inception_file, boneage.model.get_config("baseline", **overrides)
    )
    assert record["fresh"] == ["sex_dense", "age_months"] and not record["partial"]
    _assert_trunk_equals_file([model.get_layer(n) for n in record["loaded"]], inception_file)


def test_boneage_paper_partial_load_is_recorded(inception_file, tmp_path):
    config = boneage.model.get_config("paper", image_size_hw=(75, 75))
    model = boneage.build_model(config)
    record = boneage.model.load_imagenet_inception(model, inception_file, config)
    W.record_weights(tmp_path, record, verbose=0, chief=True)
    saved = json.loads((tmp_path / "config.json").read_text())["weights"]
    assert saved["partial"]["stem_conv1_conv"] == "32/45 filters, inputs summed"
    assert not saved["loaded"] and not saved["unused"]  # β = 1.4: every layer widened
    # Keras' mixed7 (Mixed7 kind) is our mixed9; our mixed7, mixed8 are extra Mixed5 repeats.
    assert "mixed9_branch7x7_0_conv" in saved["partial"]
    fresh = set(saved["fresh"])
    assert {"mixed7_branch1x1_0_conv", "mixed15_branch1x1_0_conv", "hidden_dense"} <= fresh
    assert "mixed6_branch1x1_0_conv" not in fresh
    # The copied filters compute what ImageNet's did: summed kernel, inputs only ours has at 0.
    source = dict(read_legacy_h5(inception_file))
    first = read_legacy_h5(inception_file)[0][1][0]
    stem = model.get_layer("stem_conv1_conv").get_weights()[0]
    np.testing.assert_allclose(stem[:, :, :, :32], first.sum(axis=2, keepdims=True), rtol=1e-6)
    kernel = model.get_layer("stem_conv2_conv").get_weights()[0]  # (3, 3, 45, 45)
    assert np.all(kernel[:, :, 32:, :32] == 0) and np.any(kernel[:, :, :, 32:] != 0)
    assert len(source) == 188


def test_offline_imagenet_stops_before_training_with_one_line(tmp_path, monkeypatch, capsys):
    url = W.IMAGENET_WEIGHTS["vgg16"][1]

    def offline(fname, origin, file_hash):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] no network")

    monkeypatch.setattr(W, "_get_file", offline)
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(data), "--out-dir", str(run), "--preset", "vgg16-att0"]
    status = main(kneeoa, [*argv, "--weights", "imagenet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert url in err and "--weights FILE" in err
    assert W.keras_cache_dir() in err
    assert not run.exists() or not any(run.rglob("*.h5"))
    # the paper preset of mura starts from ImageNet without the flag: the same stop
    status = main(
        mura, ["train", "--data-dir", str(data), "--out-dir", str(run), "--preset", "paper"]
    )
    err = capsys.readouterr().err
    assert status == 2 and W.IMAGENET_WEIGHTS["densenet169"][1] in err


@pytest.mark.parametrize(
    "package,spec,message",
    [("spinenet", "imagenet", "no ImageNet trunk"), ("kneeoa", "coco", "only deepra")],
)
def test_starts_a_model_cannot_have_are_one_line(tmp_path, capsys, package, spec, message):
    import importlib

    module = importlib.import_module(package)
    argv = ["train", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    assert main(module, [*argv, "--weights", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# 12 phantom knees: some bootstrap resamples of the test split hold one grade only.
@pytest.mark.filterwarnings("ignore:bootstrap_ci:RuntimeWarning")
def test_train_records_the_start_in_config_json_and_the_log(tmp_path, monkeypatch, capsys):
    from kneeoa.synthetic import write_phantom_dataset

    fname, path = _notop_file(tmp_path, "vgg16", keras.applications.VGG16, (32, 32, 3))
    _serve(monkeypatch, {fname: path})
    data = write_phantom_dataset(tmp_path / "data", num_subjects=12, seed=0, layout="folders")
    run = tmp_path / "run"
    kneeoa.train(
        data / "kneeKL224",
        run,
        preset="vgg16-att2",
        image_size_hw=(32, 32),
        epochs=1,
        batch_size=8,
        weights="imagenet",
        verbose=1,
    )
    block = json.loads((run / "config.json").read_text())["weights"]
    assert block["spec"] == "imagenet" and block["url"] == W.IMAGENET_WEIGHTS["vgg16"][1]
    assert len(block["loaded"]) == 13 and block["fresh"] == ["att2_attention", "att2_logits"]
    assert "Weights imagenet from" in capsys.readouterr().out


def test_deepra_paper_start_is_coco_detectors_and_imagenet_joints(monkeypatch):
    from common.errors import DataError
    from deepra.train import _resolve_weights
    from deepra.train import joint_model_settings
    from deepra.train import train_config

    names = {W.IMAGENET_WEIGHTS[f"efficientnetb{i}"][0] for i in (3, 4, 5)}
    asked = _serve(monkeypatch, {name: f"/cache/{name}" for name in names})
    config = train_config("paper")
    _resolve_weights(None, config, "paper")
    assert config["weights_spec"] == "coco"
    assert config["detector_overrides"]["pretrained"] == "coco"
    for key, path in config["backbone_weights_by_model"].items():
        backbone = joint_model_settings(config, key)["backbone"]
        assert path == f"/cache/{W.IMAGENET_WEIGHTS[backbone][0]}"
    assert {fname for fname, _ in asked} == names
    demo = train_config("demo")
    _resolve_weights(None, demo, "demo")
    assert demo["weights_spec"] == "none" and "backbone_weights_by_model" not in demo
    with pytest.raises(DataError, match="no ImageNet trunk"):
        _resolve_weights("imagenet", train_config("demo"), "demo")
