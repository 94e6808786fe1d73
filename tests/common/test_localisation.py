"""common.localisation: the score, its controls, and a check that content-blind maps fail it."""

import numpy as np
import pytest

from common import localisation


def _masks(n=40, size=32, seed=0):
    """Square lesions at random places: a content-blind map cannot know where each one is."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 8, size=2)
        masks[i, y : y + 8, x : x + 8] = True
    return masks


def test_energy_inside_is_the_share_of_the_map_in_the_mask():
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True
    uniform = np.ones((1, 4, 4))
    assert localisation.energy_inside(uniform, mask) == pytest.approx([0.25])
    assert localisation.energy_inside(mask.astype(float), mask) == pytest.approx([1.0])
    # negatives are no evidence; an all-zero map scores as a uniform one
    assert localisation.energy_inside(-uniform, mask) == pytest.approx([0.25])
    # maps on another grid are resized to the mask's
    small = np.zeros((1, 2, 2))
    small[0, 0, 0] = 1.0
    assert localisation.energy_inside(small, mask)[0] > 0.5


def test_pointing_game():
    mask = np.zeros((2, 4, 4), bool)
    mask[:, 0, 0] = True
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0
    maps[1, 3, 3] = 1.0
    assert list(localisation.pointing_game(maps, mask)) == [1.0, 0.0]


def test_center_prior_leaves_the_image_out():
    masks = _masks(5)
    prior = localisation.center_prior_maps(masks)
    np.testing.assert_allclose(prior[0], masks[1:].mean(axis=0), atol=1e-6)


def test_shuffled_maps_are_a_derangement_across_groups():
    maps = [np.full((2, 2), i, float) for i in range(6)]
    groups = [0, 0, 1, 1, 2, 2]
    dealt = localisation.shuffled_maps(maps, seed=3, groups=groups)
    for i, item in enumerate(dealt):
        assert groups[int(item[0, 0])] != groups[i]


def test_a_map_that_sees_the_lesion_beats_every_control():
    masks = _masks()
    rng = np.random.default_rng(1)
    seeing = masks + 0.3 * rng.random(masks.shape)  # the lesion, plus noise
    blind = rng.random(masks.shape)
    block = localisation.localisation_block(seeing, masks, untrained_maps=blind, n_boot=200)
    assert block["metric"] == localisation.METRIC
    assert set(block["controls"]) == set(localisation.CONTROLS)
    assert block["model"]["ci_low"] <= block["model"]["value"] <= block["model"]["ci_high"]
    assert localisation.beats_controls(block, margin=0.1)


@pytest.mark.parametrize("control", ["center_prior", "fixed_peak", "other_image"])
def test_content_blind_maps_handed_in_as_the_model_fail(control):
    """The control that must fail: a map that ignores the image, passed as the model's map."""
    masks = _masks()
    rng = np.random.default_rng(2)
    if control == "center_prior":
        maps = np.repeat(masks.mean(axis=0, keepdims=True), len(masks), axis=0)
    elif control == "fixed_peak":
        maps = np.zeros(masks.shape)
        maps[:, 16, 16] = 1.0
    else:
        maps = masks[np.roll(np.arange(len(masks)), 1)].astype(float)
    block = localisation.localisation_block(
        maps, masks, untrained_maps=rng.random(masks.shape), n_boot=200
    )
    assert not localisation.beats_controls(block, margin=0.0)


def test_grouped_bootstrap_runs_and_keeps_n():
    masks = _masks(12)
    groups = np.repeat(np.arange(4), 3)
    block = localisation.localisation_block(
        masks.astype(float), masks, untrained_maps=np.ones(masks.shape), groups=groups, n_boot=50
    )
    assert block["n"] == 12 and block["p_value"] < 0.1


def test_report_shows_the_block_and_panels(tmp_path):
    from common import reports

    masks = _masks(6)
    block = localisation.localisation_block(
        masks.astype(float), masks, untrained_maps=np.ones(masks.shape), n_boot=50
    )
    panel = reports.localisation_panel_png(
        np.zeros((32, 32)), {"model": masks[0], "untrained": np.ones((8, 8))}, mask=masks[0]
    )
    assert panel.startswith(reports.PNG_SIGNATURE)
    report = reports.HTMLReport("t")
    report.add_localisation(block, [(panel, "one image")], what="CAM")
    path = report.write(tmp_path / "report.html")
    text = (
        path.read_text() if hasattr(path, "read_text") else (tmp_path / "report.html").read_text()
    )
    assert "does the CAM find the lesion" in text and "centre prior" in text
    assert "beats the best content-blind control" in text


def test_one_cell_maps_of_tiny_models_are_maps():
    """A tiny model's attention can be one cell (1, 1) or (1, 1, 1): a constant map, not an error."""
    masks = _masks(4)
    for shape in ((1, 1), (1, 1, 1)):
        scores = localisation.energy_inside(np.ones((4, *shape)), masks)
        np.testing.assert_allclose(scores, masks.reshape(4, -1).mean(axis=1))
