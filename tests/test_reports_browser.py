"""Each package's report, rendered in a real headless browser: every figure loads.

The reports are built from small synthetic predictions through the same `build_report` functions
that `evaluate` calls (and the packages' real metric functions), so the test needs no model. One
screenshot per package is written; `make screenshots` copies them to `docs/report-PKG.png` for the
README (set REPORT_SCREENSHOTS_DIR to choose the folder).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import reports

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT_WIDTH = 1000


def _history(path, *, model=None):
    """A one-epoch history.csv (the case issue 18 found drawn on a -0.04..0.04 axis)."""
    frame = pd.DataFrame({"epoch": [0], "loss": [0.9], "val_loss": [1.1], "lr": [1e-3]})
    if model is not None:
        frame = pd.concat([frame.assign(model=m) for m in model], ignore_index=True)
    frame.to_csv(path, index=False)
    return path


def _film(rng, shape=(96, 80)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    film = 0.3 + 0.5 * np.exp(-(((xx - shape[1] / 2) / (shape[1] / 5)) ** 2))
    return np.clip(film + 0.05 * rng.standard_normal(shape), 0, 1)


def _kneeoa(tmp_path, rng):
    from kneeoa.evaluate import KL_NAMES
    from kneeoa.evaluate import build_report
    from kneeoa.evaluate import kl_metrics

    n = 40
    y_true = rng.integers(0, 5, n)
    probs = rng.dirichlet(np.ones(5), n)
    probs[np.arange(n), y_true] += 0.25
    probs /= probs.sum(1, keepdims=True)
    preds = {"att0": probs.argmax(-1), "att1": rng.integers(0, 5, n)}
    values, ci = kl_metrics(y_true, preds["att0"], per_branch=preds)
    values["confusion_matrix"] = reports.stats.confusion_counts(y_true, preds["att0"], 5)
    overlays = [
        (reports.overlay_png(_film(rng), rng.random((6, 5)), title=f"knee_{k}.png {KL_NAMES[k]}"),
         f"knee_{k}.png att0")
        for k in range(2)
    ]  # fmt: skip
    return build_report(
        values,
        ci,
        y_true=y_true,
        probs=probs,
        preds=preds,
        config={"test_branch": "att0", "base": "small-vgg"},
        model_name="kneeoa_demo",
        history_path=_history(tmp_path / "history.csv"),
        overlays=overlays,
        data_path="data/kneeoa",
    )


def _boneage(tmp_path, rng):
    from boneage.evaluate import age_metrics
    from boneage.evaluate import build_report
    from boneage.evaluate import cam_overlay_png

    y_true = np.concatenate([[10.0], rng.uniform(30, 220, 29)])  # one case in the 0-24 band
    y_pred = y_true + rng.normal(0, 12, y_true.size)
    male = rng.integers(0, 2, y_true.size)
    metrics = age_metrics(y_true, y_pred, male, 120.0, groups=np.arange(y_true.size).astype(str))
    cams = [(cam_overlay_png(_film(rng), rng.random((5, 5)), "hand_1.png"), "hand_1.png")]
    return build_report(
        metrics,
        y_true,
        y_pred,
        male,
        model_text="Model boneage_demo",
        history_path=_history(tmp_path / "history.csv"),
        cams=cams,
        data_path="data/boneage",
    )


def _mura(tmp_path, rng):
    from mura.evaluate import build_report
    from mura.evaluate import cam_overlay_png
    from mura.evaluate import study_metrics

    parts = np.array(["elbow"] * 12 + ["wrist"] * 12 + ["finger"] * 4)
    labels = rng.integers(0, 2, parts.size)
    labels[parts == "finger"] = 0  # a body part with one class: kappa n/a (1 class)
    probability = np.clip(0.3 * labels + 0.7 * rng.random(parts.size), 0, 1)
    patients = np.array([f"p{k // 2}" for k in range(parts.size)])
    values, ci = study_metrics(labels, probability, patients, parts, n_boot=50)
    studies = pd.DataFrame(
        {"label": labels, "probability": probability, "body_part": parts, "patient_id": patients}
    )
    overlays = [(cam_overlay_png(_film(rng), rng.random((7, 7)), "p = 0.81"), "elbow view 1")]
    return build_report(
        values,
        ci,
        studies,
        images=2 * len(studies),
        history_path=_history(tmp_path / "history.csv"),
        overlays=overlays,
        data_path="data/MURA-v1.1",
    )


def _spinenet(tmp_path, rng):
    from spinenet.evaluate import _hotspot_png
    from spinenet.evaluate import build_report
    from spinenet.explain import hotspot_overlay
    from spinenet.metrics import spinenet_metrics

    n = 6  # "6 discs of 1 patient"
    classes = {"pfirrmann": 5, "narrowing": 4, "upper_endplate": 2, "lower_marrow": 2}
    targets = {t: rng.integers(0, c, n) for t, c in classes.items()}
    probabilities = {t: rng.dirichlet(np.ones(c), n) for t, c in classes.items()}
    metrics = spinenet_metrics(targets, probabilities, n_boot=20, groups=np.zeros(n).astype(str))
    metrics.update(discs=n, patients=1, tta=False)
    volume = np.repeat(_film(rng, (56, 112))[..., None], 9, axis=-1)
    picture = hotspot_overlay(volume, rng.random(volume.shape), slices=(1, 4, 7))
    return build_report(
        metrics,
        targets,
        probabilities,
        {"branch_point": "conv5"},
        history_path=_history(tmp_path / "history.csv"),
        hotspots=[(_hotspot_png(picture), "lower marrow change: disc_1.mha L4-L5")],
        tta=False,
        data_path="data/SPIDER",
    )


def _deepra(tmp_path, rng):
    from deepra.evaluate import METRIC_KEYS
    from deepra.evaluate import build_report

    values = dict(zip(METRIC_KEYS, (1.2, 1.5, 9.0), strict=True))
    base = dict(zip(METRIC_KEYS, (1.6, 1.9, 14.0), strict=True))
    metrics = {
        **values,
        "baseline": base,
        "detector_map": {"hand": 0.8, "foot": 0.7},
        "ci": {
            **{k: [v * 0.8, v * 1.2] for k, v in values.items()},
            "baseline": {k: [v * 0.8, v * 1.2] for k, v in base.items()},
            "detector_map": {"hand": [0.7, 0.9], "foot": [0.6, 0.8]},
        },
        "patients": 8,
    }
    truth = rng.uniform(0, 60, 8)
    crop = reports.overlay_png(
        _film(rng, (64, 64)), rng.random((8, 8)), title="LH mcp", weight_by_value=True
    )
    return build_report(
        metrics,
        values=values,
        base_values=base,
        detector_ap={},
        truth=truth,
        predicted=truth + rng.normal(0, 5, truth.size),
        per_group={"hand_erosion": {"DeepRA": 1.1, "baseline": 1.5}},
        table2_rows=[{"joint model": "hand_erosion", "crops (ours)": 64}],
        history_path=_history(tmp_path / "history.csv", model=["hand_erosion", "foot_narrowing"]),
        detection_items=[],
        crop_items=[(crop, "LH mcp: erosion")],
        films=32,
        config={"preset": "demo", "seed": 0},
        data_path="data/ra2",
    )


BUILDERS = {
    "kneeoa": _kneeoa,
    "boneage": _boneage,
    "mura": _mura,
    "spinenet": _spinenet,
    "deepra": _deepra,
}


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={SCREENSHOT_WIDTH},1400")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


_FIGURES_JS = """
return Array.from(document.images).map(img => ({
    ok: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0,
    png: img.src.startsWith('data:image/png;base64,'),
    alt: img.alt,
}));
"""


def _small_png(png_bytes):
    """The screenshot as a 256-colour palette PNG: a few hundred kB become well under 200 kB."""
    from PIL import Image

    image = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    if image.width != SCREENSHOT_WIDTH:
        height = round(image.height * SCREENSHOT_WIDTH / image.width)
        image = image.resize((SCREENSHOT_WIDTH, height), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


@pytest.mark.parametrize("package", sorted(BUILDERS))
def test_report_renders_with_every_figure_loaded(package, browser, tmp_path):
    report = BUILDERS[package](tmp_path, np.random.default_rng(0))
    path = report.write(tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert "Research use only; not a medical device" in text
    assert reports.software_version() in text and "data/" in text
    for raw in ("paper 00", "val_loss", " [0, 0]", "−0.04"):
        assert raw not in text, raw  # no internal tags, raw keys or degenerate intervals
    browser.get(path.as_uri())
    figures = browser.execute_script(_FIGURES_JS)
    assert len(figures) >= 5, figures
    broken = [f["alt"] for f in figures if not (f["ok"] and f["png"])]
    assert not broken, broken
    # every classification / regression block is there
    if package in ("kneeoa", "mura", "spinenet"):
        assert "Confusion matrix" in text and "ROC" in text and "ECE" in text
    if package in ("boneage", "deepra"):
        assert "Bland–Altman" in text and "Calibration of the prediction intervals" in text
    screenshot = _small_png(browser.get_screenshot_as_png())
    (tmp_path / f"report-{package}.png").write_bytes(screenshot)
    assert len(screenshot) < 400_000
    target = os.environ.get("REPORT_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / f"report-{package}.png").write_bytes(screenshot)


def test_a_broken_figure_is_caught(browser, tmp_path):
    """Control: a report whose image data is cut short fails the check above."""
    report = reports.HTMLReport("broken").add_image(reports.plot_bars({"a": {"x": 1.0}}), "ok")
    text = report.to_html()
    start = text.index("base64,") + len("base64,")
    broken = text[:start] + text[start : start + 40] + text[text.index('"', start) :]
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    browser.get(path.as_uri())
    figures = browser.execute_script(_FIGURES_JS)
    assert [f["ok"] for f in figures] == [False]


@pytest.mark.parametrize(
    "probabilities, explained, text",
    [
        # issue 18: "lower marrow change: abnormal (p 0.47)" beside lower_marrow_pred=0
        ([0.53, 0.47], 1, "normal (p 0.53); map: evidence for abnormal"),
        ([0.2, 0.8], 1, "abnormal (p 0.80)"),
        ([0.1, 0.2, 0.6, 0.05, 0.05], 2, "grade 3 (p 0.60)"),
    ],
)
def test_spinenet_overlay_row_names_the_predicted_class(probabilities, explained, text):
    from spinenet.evaluate import _hotspot_row_title

    task = "lower_marrow" if len(probabilities) == 2 else "pfirrmann"
    title = _hotspot_row_title(task, np.asarray(probabilities), explained)
    assert title.endswith(text), title
