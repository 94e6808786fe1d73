"""`python -m PKG serve`: one REST service and browser viewer for all five packages (FastAPI + uvicorn).

Endpoints: `GET /health`, `GET /metadata` (the model card), `POST /predict` (multipart: one or more
films as PNG, JPEG or DICOM, the package's extra inputs such as boneage's `sex`, and `explain`),
`GET /` (the viewer) and FastAPI's `/docs` (OpenAPI).

The model loads once. Its forward pass (and the saliency pass of `explain`) are `tf.function`s with
a fixed input signature (a film batch of any size), so no request re-traces them: `Engine.traces`
counts the traces. A film is decoded by `common.image_io.read_image` from a private temporary file
named by its index, never by the upload's name; answers and errors name films by their index only,
and nothing from a DICOM header but `PatientSex` (boneage) is read.
"""

import base64
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from common.errors import DataError

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
PREVIEW_PIXELS = 512
_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "npy": ".npy"}
FILM_KINDS = ("png", "jpeg", "dicom")


class RequestError(Exception):
    """A bad request: HTTP status and a message naming the problem (never a file name)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = int(status)
        self.message = message


def resolve_model_file(path):
    """The model file of `--model RUN_OR_FILE`: a file as given, a run folder's `model.keras`."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.keras", "model.h5"):
            if (path / name).is_file():
                return path / name
        raise DataError("no model.keras or model.h5 in this run folder", path=path)
    if not path.is_file():
        raise DataError("no such model file or run folder", path=path)
    return path


def load_card(package, model_file, network):
    """The model card of a served model: embedded in the `.keras`, beside it, or built from it."""
    import json

    from common.model_card import build_card
    from common.model_card import read_embedded_card

    card = read_embedded_card(model_file)
    if card is None:
        beside = Path(model_file).with_name("model_card.json")
        if beside.is_file():
            card = json.loads(beside.read_text(encoding="utf-8"))
    if card is None:
        card = build_card(package, None, network, inspect_summary=False)
    return card


class Engine:
    """A serving model's forward and saliency passes, traced once each.

    Args:
        serving: a `common.serving_layers.ServingModel`.
        score: `fn(outputs, metadata) -> (B,)` tensor: the quantity `explain` maps.
    """

    def __init__(self, serving, score):
        import tensorflow as tf

        from common.serving_layers import film_signature

        self.serving = serving
        self.extras = list(serving.extra_input_names)
        self.traces = 0
        self._lock = threading.Lock()
        metadata = serving.metadata
        signature = film_signature(self.extras, channels=serving.film_channels)

        def inputs_of(args):
            return args[0]

        def forward(*args):
            self.traces += 1
            return serving(inputs_of(args), training=False)

        def explain(*args):
            self.traces += 1
            inputs = inputs_of(args)
            image = inputs["image"] if isinstance(inputs, dict) else inputs
            x = serving.preprocess(image)
            with tf.GradientTape() as tape:
                tape.watch(x)
                if serving.network_takes_dict:
                    extras = {k: tf.cast(inputs[k], tf.float32) for k in self.extras}
                    outputs = serving.network(
                        {serving.image_input_name: x, **extras}, training=False
                    )
                else:
                    outputs = serving.network(x, training=False)
                value = tf.reduce_sum(score(outputs, metadata))
            saliency = tf.reduce_max(tf.abs(tape.gradient(value, x)), axis=-1)
            return outputs, saliency

        self._forward = tf.function(forward, input_signature=signature)
        self._explain = tf.function(explain, input_signature=signature)

    def _inputs(self, image, extras):
        import tensorflow as tf

        image = np.asarray(image, np.float32)
        batch = tf.constant(image[None, ..., None] if image.ndim == 2 else image[None])
        if not self.extras:
            return batch
        return {
            "image": batch,
            **{k: tf.constant([[float(extras[k])]], tf.float32) for k in self.extras},
        }

    def run(self, image, extras=None, explain=False):
        """Outputs of one film (`(H, W)` float32 in [0, 1]) as numpy, and its saliency map or None."""
        inputs = self._inputs(image, extras or {})
        if explain:
            outputs, saliency = self._explain(inputs)
            saliency = np.asarray(saliency)[0]
        else:
            outputs, saliency = self._forward(inputs), None
        return {k: np.asarray(v)[0] for k, v in outputs.items()}, saliency


def _png_data_url(rgb):
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _preview(image):
    """The film scaled to at most `PREVIEW_PIXELS` on its long side, as uint8 RGB."""
    import cv2

    height, width = image.shape
    scale = min(1.0, PREVIEW_PIXELS / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    gray = np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def heat_png(preview_rgb, saliency):
    """The saliency map alone in the 'jet' colours (low blue, high red), at the preview's size."""
    from common.reports import overlay_map

    smooth = np.asarray(saliency, np.float32)
    if smooth.ndim == 3:  # a volume's map: the middle slice's
        smooth = smooth[..., smooth.shape[-1] // 2]
    return overlay_map(preview_rgb.astype(np.float32) / 255.0, smooth, alpha=1.0)


def _sniff(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    return None


def _dicom_sex(path):
    """`M`/`F` from a DICOM file's PatientSex (nothing else is read from the header), or None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientSex"])
    except Exception:  # noqa: BLE001  (not readable as DICOM: read_image reports it)
        return None
    value = str(ds.get("PatientSex", "") or "").strip().upper()
    return value if value in ("M", "F") else None


def _read_volumes(path, label, channels):
    """Disc volumes `(H, W, S)` from a `.npy` upload of one `(H, W, S)` or `(N, H, W, S)` array."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001  (numpy raises several types for broken files)
        raise RequestError(400, f"{label}: unreadable .npy array") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != channels or not np.issubdtype(array.dtype, np.number):
        raise RequestError(
            400,
            f"{label}: expected volumes (N, H, W, {channels}) or (H, W, {channels}), "
            f"got {array.dtype} {array.shape}",
        )
    return [np.asarray(v, np.float32) for v in array]


def decode_upload(data, index, folder, kinds=FILM_KINDS, channels=1):
    """Films from uploaded bytes: a list of `(image, kind, DICOM sex or None)`.

    A PNG, JPEG or DICOM film gives one `(H, W)` float32 image in [0, 1]; a `.npy` upload (when
    `kinds` allows it: spinenet's disc volumes) gives one `(H, W, channels)` volume per item.

    Raises:
        RequestError: empty, over the size limit, not PNG/JPEG/DICOM, corrupt, or a DICOM without
            pixel data (the message names the film by `index`, 1-based).
    """
    from common.image_io import ImageReadError
    from common.image_io import read_image

    label = f"file {index + 1}"
    if len(data) == 0:
        raise RequestError(400, f"{label}: empty file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(413, f"{label}: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    kind = _sniff(data)
    if kind not in kinds:
        if tuple(kinds) == FILM_KINDS:
            raise RequestError(415, f"{label}: not an image (expected PNG, JPEG or DICOM)")
        expected = ", ".join("a .npy volume array" if k == "npy" else k.upper() for k in kinds)
        raise RequestError(415, f"{label}: not an accepted input (expected {expected})")
    path = os.path.join(folder, f"film{index}{_SUFFIXES[kind]}")
    with open(path, "wb") as handle:
        handle.write(data)
    if kind == "npy":
        return [(volume, kind, None) for volume in _read_volumes(path, label, channels)]
    try:
        image = read_image(path)
    except ImageReadError as exc:
        reason = str(exc).replace(path, label).replace(os.path.basename(path), label)
        if label not in reason:
            reason = f"{label}: {reason}"
        raise RequestError(400, " ".join(reason.split())) from None
    sex = _dicom_sex(path) if kind == "dicom" else None
    return [(image, kind, sex)]


def _sex_value(text, label):
    value = (text or "").strip().upper()
    if value in ("M", "MALE", "1"):
        return 1.0
    if value in ("F", "FEMALE", "0"):
        return 0.0
    raise RequestError(
        422,
        f"{label}: the model needs the child's sex: send sex=M or sex=F "
        "(or a DICOM with PatientSex)",
    )


class Service:
    """The loaded model of one package and what `POST /predict` does with films."""

    def __init__(self, package, model_path):
        from common.export import load_model
        from common.export import serving_module
        from common.export import wrap_for_serving

        self.package = package
        self.module = serving_module(package)
        self.model_file = resolve_model_file(model_path)
        network = load_model(self.model_file)
        self.card = load_card(
            package, self.model_file, getattr(network, "network", None) or network
        )
        self.serving = wrap_for_serving(package, network, self.model_file)
        self.serving.metadata.setdefault("headline", self.card.get("metrics") or {})
        self.engine = Engine(self.serving, self.module.score)

    def predict(self, files, extras, explain):
        """Answers for a list of uploaded byte strings (see `POST /predict`)."""
        if not files:
            raise RequestError(422, "no files: send one or more films in the field 'files'")
        results = []
        with tempfile.TemporaryDirectory(prefix="msk-serve-") as folder:
            kinds = getattr(self.module, "INPUT_KINDS", FILM_KINDS)
            channels = self.serving.film_channels
            films = [
                film
                for i, data in enumerate(files)
                for film in decode_upload(data, i, folder, kinds, channels)
            ]
        for index, (image, _, dicom_sex) in enumerate(films):
            values = {}
            for name in self.engine.extras:
                given = extras.get(name)
                if name == "sex" and not given and dicom_sex:
                    given = dicom_sex
                values[name] = _sex_value(given, f"file {index + 1}")
            outputs, saliency = self.engine.run(image, values, explain=explain)
            answer = {"index": index, **self.module.describe(outputs, self.serving.metadata)}
            if "sex" in values:
                answer["sex"] = "M" if values["sex"] == 1.0 else "F"
            preview = _preview(image if image.ndim == 2 else image[..., image.shape[-1] // 2])
            answer["film"] = _png_data_url(preview)
            if explain:
                answer["overlay"] = _png_data_url(heat_png(preview, saliency))
                answer["overlay_kind"] = "saliency |d score / d pixel|, low blue to high red"
            results.append(answer)
        return {
            "package": self.package.__name__,
            "task": self.module.TASK,
            "results": results,
            "summary": self.module.summarise(results),
        }


_VIEWER = (Path(__file__).with_name("viewer.html")).read_text(encoding="utf-8")


def create_app(package, model_path, *, root_path=""):
    """The FastAPI application serving one model of `package`.

    Args:
        package: the package module.
        model_path: a run folder or a `.keras` / `.h5` file (a run's, or one `export` wrote).
        root_path: the path prefix under which a reverse proxy publishes the service.
    """
    from fastapi import FastAPI
    from fastapi import File
    from fastapi import Form
    from fastapi import Request
    from fastapi import UploadFile
    from fastapi.responses import HTMLResponse
    from fastapi.responses import JSONResponse

    service = Service(package, model_path)
    name = package.__name__
    app = FastAPI(
        title=f"{name}: {service.module.TASK}",
        description=f"{service.card.get('paper', name)}. Research use only; not a medical device.",
        root_path=root_path,
    )
    app.state.service = service

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 1024 * 1024:
            return JSONResponse(
                {"error": f"request larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"},
                status_code=413,
            )
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/health")
    def health():
        """Liveness: the package, the model's task, and how often its passes were traced."""
        return {
            "status": "ok",
            "package": name,
            "task": service.module.TASK,
            "traces": service.engine.traces,
        }

    @app.get("/metadata")
    def metadata():
        """The model card (versions, input spec, training data, metrics, intended use)."""
        return {
            **service.card,
            "extra_inputs": service.module.EXTRA_INPUTS,
            "served_extra_inputs": service.engine.extras,
        }

    @app.post("/predict")
    def predict(
        files: list[UploadFile] = File(..., description="films: PNG, JPEG or DICOM"),
        sex: str | None = Form(None, description="boneage: M or F (else DICOM PatientSex)"),
        explain: bool = Form(False, description="add the saliency overlay as a PNG data URL"),
    ):
        """Predicts for one or more films (one study for mura); JSON answers by film index."""
        contents = []
        for upload in files:
            data = upload.file.read(MAX_UPLOAD_BYTES + 1)
            contents.append(data)
        return service.predict(contents, {"sex": sex}, explain)

    @app.get("/", response_class=HTMLResponse)
    def viewer():
        """The single-page viewer."""
        return _VIEWER.replace("{{PACKAGE}}", name)

    return app


def serve(package, model_path, *, host="127.0.0.1", port=8000, root_path=""):
    """Runs the service with uvicorn until interrupted (binds 127.0.0.1 unless told otherwise)."""
    import uvicorn

    app = create_app(package, model_path, root_path=root_path)
    print(f"Serving {package.__name__} on http://{host}:{port}/ (docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=int(port), proxy_headers=True, log_level="info")
    return 0


__all__ = ["Engine", "RequestError", "Service", "create_app", "decode_upload", "serve"]
