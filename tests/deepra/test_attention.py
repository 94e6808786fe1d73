"""Issue 15.1: the trained demo joint model's attention finds the drawn erosion, against controls.

The hand-erosion model (the demo preset's tiny EfficientNet + attention, Fig. 2) is trained with
the pipeline's own recipe (`deepra.train.train_joint_model`: MSE, Adam 1e-3, flips, the paper's
zero-score balancing) on the annotated crops of a phantom set. Its held-out crops go through the
code `evaluate` runs on phantoms (`deepra.pipeline.predict_joints` with `explain=True`, then
`deepra.explain.attention_localisation`), and the `localisation` block it returns must show the
attention beating every content-blind control (centre prior, untrained network, another film's
attention) by `MARGIN` with p < 0.05. Handed the centre prior or the untrained network's attention
as the model's own, the same check fails.
"""

import numpy as np
import pytest

from common.localisation import beats_controls
from common.localisation import center_prior_maps
from deepra import data
from deepra import pipeline
from deepra.explain import attention_localisation
from deepra.explain import attention_maps
from deepra.explain import untrained_copy
from deepra.synthetic import truth_masks_for_crops
from deepra.synthetic import write_phantom_dataset
from deepra.train import train_config
from deepra.train import train_joint_model

CROP = 64
KEY = "hand-erosion"
# Share of the attention's energy inside the erosion, above the best control's (the demo run's
# model: see the block's numbers in the assertion message).
MARGIN = 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo hand-erosion model trained on 18 phantom patients, run on the 6 held out."""
    folder = tmp_path_factory.mktemp("attention")
    root = write_phantom_dataset(folder / "data", num_subjects=24, seed=1)
    films = data.read_records(root)
    films["split"] = data.split_patients(
        films, test_fraction=0.25, val_fraction_of_train=0.0, seed=0
    ).to_numpy()
    boxes = data.read_boxes(root)
    records = data.joint_records(films, boxes, KEY)
    config = train_config("demo", crop_size=CROP, joint_epochs=30, joint_batch_size=16)
    model = train_joint_model(KEY, records, config=config, out_dir=folder / "run", seed=0)
    held_out = films[films["split"] == "test"]
    results = pipeline.predict_joints({KEY: model}, held_out, boxes, explain=True)
    return {"root": root, "model": model, "results": results}


def _block(trained, attention=None):
    """The localisation block of the held-out crops; `attention` replaces the model's maps."""
    results = trained["results"]
    if attention is not None:
        records = results[KEY].copy()
        records.attrs = {**results[KEY].attrs, "attention": attention}
        results = {KEY: records}
    block, panels = attention_localisation({KEY: trained["model"]}, results, trained["root"])
    return block, panels


def test_attention_localisation_block(trained):
    """The block evaluate writes on phantoms: enough held-out eroded crops, drawn in the report."""
    block, panels = _block(trained)
    assert block["unit"] == "crop" and block["models"] == [KEY]
    assert block["n"] >= 20, block["n"]  # held-out crops with a drawn erosion
    assert len(panels) == 3 and all(png.startswith(b"\x89PNG") for png, _ in panels)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="issue 15.1, measured: the demo attention scores 0.009 of its energy on the erosion "
    "(chance 0.007), the centre prior 0.077 (p = 1.0); strict: remove this mark when it wins",
)
def test_attention_beats_the_content_blind_controls(trained):
    block, _ = _block(trained)
    # Measured (seed 0, 37 crops): model 0.0095 [0.0074, 0.0129], chance 0.0071, centre prior
    # 0.077 [0.068, 0.087], untrained 0.0071, shuffled 0.0088.
    assert beats_controls(block, margin=MARGIN), block


def test_content_blind_maps_handed_in_as_the_model_fail(trained):
    """The check can fail: the centre prior, or the untrained network's own attention, handed in
    as the model's map does not beat the controls."""
    records = trained["results"][KEY]
    masks = truth_masks_for_crops(trained["root"], records, records.attrs["crops"].shape[1:3])
    eroded = masks.reshape(len(masks), -1).max(axis=1) > 0.5
    # Crops without an erosion are not scored; give them a map of the right size all the same.
    prior = np.zeros(masks.shape, np.float32)
    prior[eroded] = center_prior_maps(masks[eroded])
    block, _ = _block(trained, attention=prior)
    assert block["model"]["value"] == pytest.approx(block["controls"]["center_prior"]["value"])
    assert not beats_controls(block, margin=MARGIN), block
    # another fresh network than the block's own untrained control (seed 0)
    untrained = attention_maps(untrained_copy(trained["model"], seed=1), records.attrs["crops"])
    block, _ = _block(trained, attention=untrained)
    assert not beats_controls(block, margin=MARGIN), block
