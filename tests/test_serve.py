"""`python -m PKG serve`: the API through FastAPI's TestClient for every package, bad requests,
no re-tracing, no PHI; one real uvicorn process under 20 concurrent requests; the viewer in
headless Chromium (it writes `docs/viewer.png`)."""

import base64
import importlib
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.serve import MAX_UPLOAD_BYTES
from common.serve import create_app
from common.testing import free_ports
from common.testing import subprocess_env
from tests.serving.tiny import PACKAGES
from tests.serving.tiny import build_all
from tests.test_export_serving import _cli_predictions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "tiny_models"
    return build_all(str(root))


def _dicom_bytes(image01, *, sex="M", pixels=True):
    """A small DICOM film with identifying header fields (to check that none leak)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientName = "Doe^Janet"
    ds.PatientID = "PID-4711"
    ds.PatientBirthDate = "20100203"
    ds.PatientSex = sex
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels:
        array = np.round(np.asarray(image01) * 4095).astype(np.uint16)
        ds.Rows, ds.Columns = array.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = array.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _post(client, files, **form):
    return client.post(
        "/predict",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        data=form,
    )


@pytest.mark.parametrize("name", PACKAGES)
def test_api_per_package(tiny, tmp_path, name):
    info = tiny[name]
    app = create_app(importlib.import_module(name), Path(info["model"]).parent)
    client = TestClient(app)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["package"] == name
    card = client.get("/metadata").json()
    assert card["package"] == name and "not a medical device" in card["intended_use"]
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    assert name in client.get("/").text
    data = Path(info["input"]).read_bytes()
    response = _post(client, [("Smith_John_1234.png", data)], explain="true", **info["extras"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Smith_John" not in response.text
    result = body["results"][0]
    assert result["overlay"].startswith("data:image/png;base64,")
    overlay = cv2.imdecode(
        np.frombuffer(base64.b64decode(result["overlay"].split(",")[1]), np.uint8), 1
    )
    film = cv2.imdecode(np.frombuffer(base64.b64decode(result["film"].split(",")[1]), np.uint8), 1)
    assert overlay.shape == film.shape and overlay.std() > 0
    expected = _cli_predictions(name, info, tmp_path / "cli")
    got = _answer_numbers(name, body)
    np.testing.assert_allclose(got, expected[: len(got)], atol=2e-3 if name == "boneage" else 1e-4)
    # the forward pass is traced once, whatever the film's size; explain's pass once too
    traces = client.get("/health").json()["traces"]
    if name != "spinenet":
        other = cv2.imencode(".png", np.full((57, 91), 99, np.uint8))[1].tobytes()
        for _ in range(2):
            assert _post(client, [("a.png", other)], **info["extras"]).status_code == 200
            assert (
                _post(client, [("a.png", data)], explain="true", **info["extras"]).status_code
                == 200
            )
        assert client.get("/health").json()["traces"] == traces + 1  # + the plain forward pass


def _answer_numbers(name, body):
    rows = []
    for result in body["results"]:
        if name == "kneeoa":
            rows.append([result["probabilities"][f"KL{k}"] for k in range(5)])
        elif name == "mura":
            rows.append([result["probabilities"]["abnormal"]])
        elif name == "boneage":
            rows.append([result["prediction"]["bone_age_months"]])
        elif name == "deepra":
            rows.append(list(result["prediction"].values()))
        else:
            rows.append([p for task in result["probabilities"].values() for p in task.values()])
    return np.array(rows)


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(tiny, caplog):
    info = tiny["boneage"]
    client = TestClient(create_app(importlib.import_module("boneage"), info["model"]))
    good = Path(info["input"]).read_bytes()
    film = cv2.imread(info["input"], cv2.IMREAD_GRAYSCALE) / 255.0
    cases = {
        "not an image": ([("Doe_notes.txt", b"hello, this is text")], {"sex": "M"}, 415),
        "truncated": ([("Doe.png", good[: len(good) // 2])], {"sex": "M"}, 400),
        "pixel data": ([("Doe.dcm", _dicom_bytes(film, pixels=False))], {"sex": "M"}, 400),
        "sex": ([("Doe.png", good)], {}, 422),
        "empty": ([("Doe.png", b"")], {"sex": "M"}, 400),
    }
    for needle, (files, form, status) in cases.items():
        response = _post(client, files, **form)
        assert response.status_code == status, (needle, response.text)
        assert needle in response.json()["error"] and "file 1" in response.json()["error"]
        assert "Doe" not in response.text
    big = _post(client, [("x.png", b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES + 10))], sex="M")
    assert big.status_code == 413 and "50 MB" in big.json()["error"]
    assert client.post("/predict", data={"sex": "M"}).status_code == 422  # no files at all
    # a DICOM gives its PatientSex, and nothing of its header comes back or reaches the log
    with caplog.at_level("DEBUG"):
        response = _post(client, [("Doe_Janet_PID-4711.dcm", _dicom_bytes(film, sex="F"))])
    assert response.status_code == 200 and response.json()["results"][0]["sex"] == "F"
    for secret in ("Doe", "Janet", "PID-4711", "20100203"):
        assert secret not in response.text and secret not in caplog.text
    assert _post(client, [("ok.png", good)], sex="M").status_code == 200


@pytest.fixture(scope="module")
def server(tiny):
    """`python -m kneeoa serve` in its own process on a free local port."""
    info = tiny["kneeoa"]
    port = free_ports(1)[0]
    log = open(Path(info["model"]).parent / "serve.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kneeoa",
            "serve",
            "--model",
            str(Path(info["model"]).parent),
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            time.sleep(0.2)
    yield url, info, Path(log.name)
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_uvicorn_answers_20_concurrent_requests_like_the_cli(server, tmp_path):
    import httpx

    url, info, log = server
    data = Path(info["input"]).read_bytes()

    def ask(i):
        files = [("files", (f"Patient_{i}.png", data, "image/png"))]
        return httpx.post(url + "/predict", files=files, timeout=120)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(ask, range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    expected = _cli_predictions("kneeoa", info, tmp_path / "cli")
    for response in responses:
        np.testing.assert_allclose(_answer_numbers("kneeoa", response.json()), expected, atol=1e-4)
    assert httpx.get(url + "/health").json()["traces"] == 1
    assert "Patient_" not in log.read_text()


def test_viewer_in_headless_chromium(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, info, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,640"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path="/usr/bin/chromedriver"), options=options
    )
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(lambda d: "kl_grade" in d.find_element(By.ID, "task").text)
        driver.find_element(By.ID, "file").send_keys(str(Path(info["input"]).resolve()))
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        )
        text = driver.find_element(By.ID, "prediction").text
        expected = _cli_predictions("kneeoa", info, tmp_path / "cli")
        assert text == f"film 1: KL {int(expected[0].argmax())}"
        overlay = driver.find_element(By.ID, "overlay")
        assert overlay.is_displayed() and overlay.get_attribute("src").startswith("data:image/png")
        assert driver.execute_script("return document.getElementById('overlay').naturalWidth") > 0
        slider = driver.find_element(By.ID, "opacity")
        driver.execute_script(
            "arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", slider
        )
        assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.8)
        driver.execute_script(  # the screenshot shows the film through the overlay
            "arguments[0].value = 40; arguments[0].dispatchEvent(new Event('input'))", slider
        )
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(
        image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA
    )
    os.makedirs(REPO / "docs", exist_ok=True)
    ok, encoded = cv2.imencode(".png", small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    from common.fileio import atomic_write_bytes

    atomic_write_bytes(REPO / "docs" / "viewer.png", encoded.tobytes())
