"""Tests for common.reports: files, numbers behind the plots, PNG plots and the HTML report."""

import base64
import json
import math
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from common import reports
from common.errors import DataError


def _decode_png(png):
    assert isinstance(png, bytes)
    assert png.startswith(reports.PNG_SIGNATURE)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def _history():
    return pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3],
            "loss": [1.2, 0.9, 0.7, 0.6],
            "val_loss": [1.3, 1.0, 0.9, 0.95],
            "accuracy": [0.4, 0.5, 0.6, 0.65],
            "val_accuracy": [0.35, 0.45, 0.5, 0.5],
            "lr": [1e-3, 1e-3, 1e-4, 1e-4],
        }
    )


# --------------------------------------------------------------------------- files


def test_anonymize_id():
    a = reports.anonymize_id("PAT-000123")
    assert re.fullmatch(r"[0-9a-f]{12}", a)
    assert a == reports.anonymize_id("PAT-000123")
    assert a != reports.anonymize_id("PAT-000124")
    assert a != reports.anonymize_id("PAT-000123", salt="s")
    assert len(reports.anonymize_id(123, length=6)) == 6
    with pytest.raises(ValueError):
        reports.anonymize_id("x", length=2)


def test_write_json_converts_and_nan_is_null(tmp_path):
    obj = {
        "accuracy": np.float32(0.5),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "nan": float("nan"),
        "inf": np.float64(np.inf),
        "array": np.array([1.0, np.nan]),
        "nested": {1: (np.float64(0.25), None)},
        "path": tmp_path / "x.png",
    }
    path = reports.write_json(tmp_path / "out" / "metrics.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {
        "accuracy": 0.5,
        "n": 7,
        "flag": True,
        "nan": None,
        "inf": None,
        "array": [1.0, None],
        "nested": {"1": [0.25, None]},
        "path": str(tmp_path / "x.png"),
    }
    assert _leftovers(tmp_path) == []


def test_write_json_failure_keeps_old_file(tmp_path):
    path = reports.write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(TypeError):
        reports.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert _leftovers(tmp_path) == []


def test_write_csv_round_trip(tmp_path):
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "prob": [0.25, 0.75], "label": [0, 1]})
    path = reports.write_csv(tmp_path / "p" / "predictions.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(path), frame, check_dtype=False)
    assert path.read_text().splitlines()[0] == "image,prob,label"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        reports.write_csv(tmp_path / "q.csv", [{"a": 1}])


def test_read_history_round_trip(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss,lr\n1,0.5,,0.001\n0,0.9,1.0,0.001\n")
    frame = reports.read_history(path)
    assert list(frame.columns) == ["epoch", "loss", "val_loss", "lr"]
    assert frame["epoch"].tolist() == [0, 1]
    assert frame["loss"].tolist() == [0.9, 0.5]
    assert math.isnan(frame["val_loss"].iloc[1])


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "not found"),
        ("", "empty"),
        ("epoch,loss\n0,0.5\n1,abc\n", "row 3, column 'loss'"),
    ],
)
def test_read_history_errors(tmp_path, content, match):
    path = tmp_path / "history.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        reports.read_history(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "value, text",
    [
        (0.63, "0.63"),
        (0.631249, "0.631"),
        (123.456, "123"),
        (26.06, "26.1"),
        (12345.6, "12346"),
        (0.0001234, "1.23e-04"),
        (0.0, "0"),
        (7, "7"),
        (np.int64(3), "3"),
        (np.float32(0.5), "0.5"),
        (True, "True"),
        (None, "–"),
        (float("nan"), "–"),
        ("kl<2", "kl<2"),
        (reports.ValueCI(0.63, 0.58, 0.68), "0.630 [0.580, 0.680]"),
        ((0.6312, (0.581, 0.6789)), "0.631 [0.581, 0.679]"),
        # one precision for a value and its interval (issue 18: "26.06 [8.254, 48.33]")
        (reports.ValueCI(26.06, 8.254, 48.33), "26.1 [8.3, 48.3]"),
        (reports.value_with_ci(5.0, (5.0, 5.0), cases=1), "5 [n/a (1 case)]"),
        (reports.value_with_ci(0.0, (0.0, 0.0), classes=1), "n/a (1 class)"),
        (reports.value_with_ci(0.7, None), "0.7 [n/a (no interval)]"),
        (reports.value_with_ci(float("nan"), (0.1, 0.2)), "–"),
    ],
)
def test_format_value(value, text):
    assert reports.format_value(value) == text


def test_reliability_table_and_ece():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.55, 0.65, 0.95, 1.0])
    table = reports.reliability_table(y, p, n_bins=2)
    assert table["count"].tolist() == [2, 4]
    assert table["mean_prob"].tolist() == pytest.approx([0.1, (0.55 + 0.65 + 0.95 + 1.0) / 4])
    assert table["fraction_positive"].tolist() == pytest.approx([0.0, 0.75])
    expected = (2 * 0.1 + 4 * abs(0.75 - 0.7875)) / 6
    assert reports.expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)
    empty = reports.reliability_table(y, p, n_bins=10)
    assert np.isnan(empty["mean_prob"].iloc[3]) and empty["count"].sum() == 6
    with pytest.raises(ValueError):
        reports.reliability_table([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        reports.reliability_table([0, 1], [0.1, 1.2])


def test_bland_altman_stats():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 200, 50)
    pred = truth + rng.normal(2.0, 5.0, 50)
    stats = reports.bland_altman_stats(truth, pred)
    diff = pred - truth
    assert stats["mean_difference"] == pytest.approx(diff.mean())
    assert stats["sd_difference"] == pytest.approx(diff.std(ddof=1))
    assert stats["upper_limit"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1))
    assert stats["lower_limit"] == pytest.approx(diff.mean() - 1.96 * diff.std(ddof=1))
    with pytest.raises(ValueError):
        reports.bland_altman_stats([1.0], [2.0])


# --------------------------------------------------------------------------- plots

_RNG = np.random.default_rng(1)
_TRUTH = _RNG.uniform(0, 228, 40)
_PRED = _TRUTH + _RNG.normal(0, 10, 40)
_PROBS3 = _RNG.dirichlet([1, 1, 1], 60)

PLOTS = {
    "learning_curves": lambda: reports.plot_learning_curves(_history()),
    "learning_curves_loss_only": lambda: reports.plot_learning_curves(
        pd.DataFrame({"loss": [1.0, 0.5]})
    ),
    "learning_curves_empty": lambda: reports.plot_learning_curves(pd.DataFrame({"epoch": []})),
    "confusion": lambda: reports.plot_confusion_matrix(
        [[5, 1, 0], [2, 7, 1], [0, 0, 0]], ["KL0", "KL1", "KL2"]
    ),
    "confusion_counts": lambda: reports.plot_confusion_matrix(
        np.eye(2) * 4, ["normal", "abnormal"], normalize=False
    ),
    "roc": lambda: reports.plot_roc(
        {"elbow": ([0, 0.2, 1], [0, 0.8, 1], 0.8), "wrist": (np.linspace(0, 1, 5), np.ones(5), 0.9)}
    ),
    "calibration_binary": lambda: reports.plot_calibration(
        _RNG.integers(0, 2, 60), _RNG.uniform(0, 1, 60)
    ),
    "calibration_ovr": lambda: reports.plot_calibration(
        _RNG.integers(0, 3, 60), _PROBS3, n_bins=5, class_names=["a", "b", "c"]
    ),
    "calibration_one_class": lambda: reports.plot_calibration(
        _RNG.integers(0, 3, 60), _PROBS3, class_index=2
    ),
    "scatter": lambda: reports.plot_scatter(_TRUTH, _PRED, "true (months)", "predicted (months)"),
    "bland_altman": lambda: reports.plot_bland_altman(_TRUTH, _PRED, unit="months"),
    "error_by_group": lambda: reports.plot_error_by_group(
        np.array(["M", "F"] * 20), np.abs(_PRED - _TRUTH)
    ),
    "bars": lambda: reports.plot_bars(
        {"att0": {"accuracy": 0.6, "kappa": 0.7}, "att1": {"accuracy": 0.62, "kappa": float("nan")}}
    ),
    "overlay": lambda: reports.overlay_png(
        np.linspace(0, 1, 48 * 32).reshape(48, 32), np.eye(6), title="img_0001.png"
    ),
}


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plot_returns_valid_png(name):
    image = _decode_png(PLOTS[name]())
    height, width = image.shape[:2]
    assert height >= 100 and width >= 200
    assert image.std() > 5  # something was drawn


@pytest.mark.parametrize(
    "call",
    [
        lambda: reports.plot_confusion_matrix([[1, 2, 3]], ["a"]),
        lambda: reports.plot_confusion_matrix(np.eye(3), ["a", "b"]),
        lambda: reports.plot_roc({}),
        lambda: reports.plot_calibration([0, 1], np.ones((2, 2, 2))),
        lambda: reports.plot_calibration([0, 1], [[0.5, 0.5], [0.1, 0.9]], class_index=4),
        lambda: reports.plot_scatter([1, 2], [1]),
        lambda: reports.plot_error_by_group(["a"], [1.0, 2.0]),
        lambda: reports.plot_bars({}),
        lambda: reports.plot_learning_curves([1, 2]),
    ],
)
def test_plots_reject_bad_input(call):
    with pytest.raises(ValueError):
        call()


def test_plots_leave_no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for make in PLOTS.values():
        make()
    assert plt.get_fignums() == before


def test_overlay_map():
    image = np.full((40, 60), 0.5, np.float32)
    heat = np.zeros((4, 6), np.float32)
    heat[3, 5] = 10.0  # hottest in the bottom-right corner
    rgb = reports.overlay_map(image, heat, alpha=0.5)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    corner, opposite = rgb[-1, -1].astype(int), rgb[0, 0].astype(int)
    assert corner[0] > corner[2]  # jet's top is red
    assert opposite[2] > opposite[0]  # jet's bottom is blue
    # Bilinear resize: the heat fades smoothly rather than in 10-pixel blocks.
    row = rgb[-1, :, 0].astype(int)
    assert len(np.unique(row[30:])) > 5
    gray = reports.overlay_map(image, heat, alpha=0.0)
    assert np.all(gray == 128)
    flat = reports.overlay_map(image[..., None], np.ones((3, 3)), alpha=1.0)
    assert np.all(flat == flat[0, 0])  # a constant map is one colour
    with pytest.raises(ValueError):
        reports.overlay_map(image, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        reports.overlay_map(image, heat, cmap="no-such-map")


def test_save_png(tmp_path):
    png = reports.plot_bars({"a": {"x": 1.0}})
    path = reports.save_png(tmp_path / "plots" / "bars.png", png)
    assert path.read_bytes() == png
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        reports.save_png(tmp_path / "bad.png", b"not a png")


# --------------------------------------------------------------------------- HTML report


def _report():
    report = reports.HTMLReport("Run <1> & co")
    report.add_heading("Metrics").add_paragraph("Line one\n<b>not bold</b>")
    report.add_metrics(
        {"accuracy": 0.6312, "per_branch_accuracy": {"att0": 0.61, "att1": 0.6}},
        ci={"accuracy": (0.5812, 0.6789), "per_branch_accuracy": {"att0": [0.55, 0.66]}},
        reference={"accuracy": 0.647, "kappa_quadratic": 0.83},
        reference_note="Table 3, OAI/MOST test set",
    )
    report.add_table(
        [
            {"image": "<script>alert(1)</script>.png", "prob": 0.123456},
            {"image": "b.png", "extra": 2},
        ],
        caption="per-image <results>",
    )
    report.add_table(pd.DataFrame({"a": [1.5, 2.25], "b": ["x", "y"]}))
    report.add_image(reports.plot_bars({"a": {"x": 1.0}}), caption="bars & stuff")
    report.add_images_grid(
        [(reports.overlay_png(np.zeros((8, 8)), np.eye(8)), f"img_{i}.png") for i in range(2)]
    )
    return report


def test_html_report_is_self_contained_and_escaped(tmp_path):
    path = _report().write(tmp_path / "run" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text
    assert 'src="/' not in text and "<link" not in text and "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in text
    assert "Run &lt;1&gt; &amp; co" in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert "per-image &lt;results&gt;" in text
    assert "<style>" in text
    assert _leftovers(tmp_path) == []


def test_html_report_embeds_images(tmp_path):
    text = _report().to_html()
    sources = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(sources) == 3
    for source in sources:
        _decode_png(base64.b64decode(source))
    assert "bars &amp; stuff" in text and "img_1.png" in text
    assert 'class="grid"' in text
    with pytest.raises(ValueError):
        reports.HTMLReport("x").add_image(b"GIF89a", "not png")


def test_html_metrics_table():
    text = _report().to_html()
    assert "0.631 [0.581, 0.679]" in text
    assert "0.647" in text and "Table 3, OAI/MOST test set" in text
    # readable row labels (the JSON keys stay): underscores gone, abbreviations capitalised
    assert "per branch accuracy / att0" in text and "0.610 [0.550, 0.660]" in text
    assert "per_branch_accuracy" not in text
    # A paper figure we did not measure still appears, with an empty value beside it.
    row = re.search(r"<tr><td>kappa quadratic</td><td>(.*?)</td><td[^>]*>(.*?)</td></tr>", text)
    assert row is not None and row.group(1) == "–" and row.group(2) == "0.83"
    # Numbers are formatted to 3 significant figures, table columns are the union.
    assert "0.123" in text and "0.1235" not in text
    assert "<th>extra</th>" in text


def test_html_metrics_without_reference_or_ci():
    text = reports.HTMLReport("t").add_metrics({"mae_months": 7.891234}).to_html()
    assert (
        "7.89" in text and "7.891" not in text and "paper" not in text.lower().split("</style>")[1]
    )
    with pytest.raises(ValueError):
        reports.HTMLReport("t").add_metrics({"a": 1.0}, ci={"a": (0.1, 0.2, 0.3)})


def test_add_metrics_reference_column_label():
    text = (
        reports.HTMLReport("t")
        .add_metrics(
            {"kappa": 0.71},
            reference={"kappa": 0.705},
            reference_note="MURA test set",
            reference_label="MURA paper",
        )
        .to_html()
    )
    assert "<th>MURA paper</th>" in text and ">paper<" not in text
    assert "MURA paper: MURA test set" in text
    default = reports.HTMLReport("t").add_metrics({"k": 1.0}, reference={"k": 2.0}).to_html()
    assert "<th>paper</th>" in default and "Paper: figure as published" in default


# --------------------------------------------------------------------------- issue 18


def test_ece_against_a_hand_computation():
    # 4 bins; cases: bin 0 holds p=.1,.2 (truth 0,1), bin 2 holds p=.6 (truth 1),
    # bin 3 holds p=.8,.9,.95 (truth 1,1,0). ECE = sum_b n_b/N |frac_b - mean_p_b|.
    y = [0, 1, 1, 1, 1, 0]
    p = [0.1, 0.2, 0.6, 0.8, 0.9, 0.95]
    by_hand = (2 * abs(0.5 - 0.15) + 1 * abs(1.0 - 0.6) + 3 * abs(2 / 3 - 2.65 / 3)) / 6
    assert reports.expected_calibration_error(y, p, n_bins=4) == pytest.approx(by_hand)
    # perfectly calibrated control: every bin's fraction equals its mean probability
    assert reports.expected_calibration_error([0, 1], [0.0, 1.0], n_bins=4) == 0.0


def test_bland_altman_limits_against_a_hand_computation():
    truth = [10.0, 20.0, 30.0, 40.0]
    pred = [12.0, 19.0, 33.0, 42.0]  # differences 2, -1, 3, 2: mean 1.5
    sd = math.sqrt(((0.5) ** 2 + (2.5) ** 2 + (1.5) ** 2 + (0.5) ** 2) / 3)
    stats = reports.bland_altman_stats(truth, pred)
    assert stats["mean_difference"] == pytest.approx(1.5)
    assert stats["sd_difference"] == pytest.approx(sd)
    assert stats["lower_limit"] == pytest.approx(1.5 - 1.96 * sd)
    assert stats["upper_limit"] == pytest.approx(1.5 + 1.96 * sd)


def test_interval_calibration_gaussian_errors_cover_their_level():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 200, 4000)
    gaussian = reports.interval_calibration_table(truth, truth + rng.normal(1, 5, truth.size))
    assert np.allclose(gaussian["observed"], gaussian["nominal"], atol=0.03)
    # control: heavy-tailed errors (Cauchy) make the Gaussian intervals miss the nominal levels
    heavy = reports.interval_calibration_table(truth, truth + rng.standard_cauchy(truth.size))
    assert np.abs(heavy["observed"] - heavy["nominal"]).max() > 0.1


def test_roc_curves_per_group_skip_single_class_groups():
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.2, 0.8, 0.3, 0.6, 0.9, 0.4])
    curves = reports.roc_curves(y, p, groups=["elbow"] * 4 + ["wrist"] * 2)
    assert set(curves) == {"overall", "elbow"}  # the wrist has one class: no curve
    assert curves["elbow"][2] == pytest.approx(1.0)
    multi = reports.roc_curves([0, 1, 2, 2], np.eye(3)[[0, 1, 2, 2]], class_names="abc")
    assert set(multi) == {"a", "b", "c"}


@pytest.mark.parametrize(
    "key, label",
    [
        ("val_mean_per_class_accuracy", "mean per class accuracy"),
        ("val_mae", "MAE"),
        ("kl_rmse", "KL RMSE"),
        ("RSNA 2017 (paper 003, Table 1)", "RSNA 2017 Table 1)"),
    ],
)
def test_readable_label(key, label):
    assert reports.readable_label(key) == label


def test_learning_curves_after_one_epoch_show_epoch_one():
    from matplotlib.figure import Figure

    from common.reports import plots

    axis = Figure().subplots()
    plots._epoch_axis(axis, np.array([1.0]))
    assert axis.get_xlim() == (0.5, 1.5) and list(axis.get_xticks()) == [1.0]
    png = reports.plot_learning_curves(pd.DataFrame({"epoch": [0], "loss": [1.0], "val_loss": [2]}))
    assert _decode_png(png).std() > 5


def test_overlay_png_has_a_colour_bar():
    image = np.full((64, 64), 0.5)
    heat = np.outer(np.linspace(0, 1, 8), np.ones(8))
    with_bar = _decode_png(reports.overlay_png(image, heat))
    plain = _decode_png(reports.image_png(reports.overlay_map(image, heat)))
    assert with_bar.shape[1] > plain.shape[1]  # the colour bar takes room on the right
    # the bar's column holds the jet colours: blue at the bottom, red at the top
    strip = with_bar[:, int(plain.shape[1] * 1.02) : int(plain.shape[1] * 1.1)].reshape(-1, 3)
    assert (strip[:, 0] > 200).any() and (strip[:, 2] > 200).any()


def test_weight_by_value_keeps_the_film_visible_where_the_map_is_low():
    film = np.full((10, 10), 0.5)
    heat = np.zeros((10, 10))
    heat[0, 0] = 1.0
    blended = reports.overlay_map(film, heat, alpha=0.6, weight_by_value=True)
    assert np.all(blended[5, 5] == 128)  # zero attention: the gray film, untouched
    opaque = reports.overlay_map(film, heat, alpha=0.6)
    assert not np.all(opaque[5, 5] == 128)  # control: a flat blend tints it


def test_report_header_names_data_software_and_research_use():
    text = reports.HTMLReport("t", data_path="/data/mura").to_html()
    assert "/data/mura" in text
    assert reports.software_version() in text and "msk-radiology-suite" in text
    assert "Research use only; not a medical device" in text


def test_add_classification_and_regression_figures():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    probs = rng.dirichlet([1, 1, 1], 40)
    report = reports.HTMLReport("t").add_classification(y, probs, ["a", "b", "c"], what="grade")
    report.add_regression(rng.uniform(0, 9, 20), rng.uniform(0, 9, 20), what="score", unit="pt")
    text = report.to_html()
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 6
    assert "Confusion matrix, grade" in text and "ROC curves per class" in text
    assert "Bland–Altman, score" in text and "Calibration of the prediction intervals" in text


def test_metrics_caption_reads_as_sentences():
    text = (
        reports.HTMLReport("t")
        .add_metrics({"a": 0.5}, ci={"a": (0.4, 0.6)}, reference={"a": 0.6}, reference_note="X.")
        .to_html()
    )
    assert "Paper: X. Brackets: 95% bootstrap interval." in text and ".." not in text
