"""Issue 5's explanation test: the trained demo joint model attends to the drawn erosion.

The hand-erosion model (the demo preset's tiny EfficientNet + attention, Fig. 2) is trained with
the pipeline's own recipe (`deepra.train.train_joint_model`: MSE, Adam 1e-3, flips, the paper's
zero-score balancing) on the annotated crops of a phantom set, then its attention weights (the
locally connected sigmoid layer) are compared with the phantom truth (`_phantom_truth/masks`, the
bone each erosion removed) on crops of HELD-OUT patients: the weight per pixel on the drawn bite
must exceed the weight per pixel on the rest of the crop, clearly, and clearly more than an
untrained model of the same configuration does.
"""

import cv2
import numpy as np
import pytest

from deepra import data
from deepra.joints import build_joint_model
from deepra.joints import explain_joint_model
from deepra.synthetic import truth_masks_for_crops
from deepra.synthetic import write_phantom_dataset
from deepra.train import joint_model_settings
from deepra.train import train_config
from deepra.train import train_joint_model

CROP = 64
KEY = "hand-erosion"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo hand-erosion model trained on 18 phantom patients; 6 held out."""
    folder = tmp_path_factory.mktemp("attention")
    root = write_phantom_dataset(folder / "data", num_subjects=24, seed=1)
    films = data.read_records(root)
    films["split"] = data.split_patients(
        films, test_fraction=0.25, val_fraction_of_train=0.0, seed=0
    ).to_numpy()
    records = data.joint_records(films, data.read_boxes(root), KEY)
    config = train_config("demo", crop_size=CROP, joint_epochs=30, joint_batch_size=16)
    model = train_joint_model(KEY, records, config=config, out_dir=folder / "run", seed=0)
    held_out = records[records["split"] == "test"]
    masks = truth_masks_for_crops(root, held_out, (CROP, CROP))
    eroded = masks.reshape(len(masks), -1).max(axis=1) > 0.5
    return {
        "model": model,
        "config": config,
        "records": held_out[eroded],
        "masks": masks[eroded],
    }


def _attention_ratios(model, records, masks):
    """Per crop: mean attention weight on the drawn erosion / mean weight on the rest."""
    crops = data.extract_crops(records, (CROP, CROP), dtype=np.float32)
    attention = np.asarray(explain_joint_model(model)(crops)["attention_mask"])[..., 0]
    ratios = []
    for weights, mask in zip(attention, masks, strict=True):
        weights = cv2.resize(weights, (CROP, CROP), interpolation=cv2.INTER_LINEAR)
        inside = mask > 0.5
        ratios.append(weights[inside].mean() / weights[~inside].mean())
    return np.asarray(ratios)


def test_attention_mass_falls_on_the_drawn_erosion(trained):
    records, masks = trained["records"], trained["masks"]
    assert len(records) >= 20, len(records)  # held-out crops with a drawn erosion
    ratios = _attention_ratios(trained["model"], records, masks)
    settings = joint_model_settings(trained["config"], KEY)
    untrained = _attention_ratios(build_joint_model(settings), records, masks)
    # trained: ~1.4x the weight per pixel on the bite (the demo run's model: ~1.5x)
    assert ratios.mean() > 1.15, ratios.mean()
    assert np.mean(ratios > 1.0) > 0.7, np.mean(ratios > 1.0)
    assert ratios.mean() > untrained.mean() + 0.1, (ratios.mean(), untrained.mean())
