"""Input-pipeline benchmarks: kneeoa's training pipeline against the papers' Keras generator.

All entries use the same phantom knee radiographs (512x512, 8-bit grayscale PNG, in two class
sub-folders, written once into `bench/_work/bench_pipeline/knees/`) and the input of the kneeoa
`paper` preset: 320 x 224, histogram equalisation, random horizontal flip, batch 64.

Ours is the pipeline kneeoa's training uses, `kneeoa.data.make_dataset(records, config="paper",
training=True)` as `kneeoa.train` builds it (tf.io decode in the graph, resize by area averaging,
gray, equalise, uint8 cache, shuffle, flip, gray repeated to 3 channels, batch, prefetch), with
TensorFlow's default threads. Uncached (`cache=False`) it decodes every epoch; cached, the first
pass (untimed) fills the cache and later passes are shuffle + flip + batching.

The reference is `tf_keras.preprocessing.image.ImageDataGenerator(horizontal_flip=True,
rescale=1/255, preprocessing_function=<the same equalisation in NumPy>).flow_from_directory(
target_size=(320, 224), color_mode="grayscale", batch_size=64, interpolation="box")`: PIL decode
and box (area) resize, NumPy equalisation and flip per image. (Keras 3 has no ImageDataGenerator
and its `fit` no `workers` argument, so tf_keras, the test-only reference, provides both.) It runs
in the calling thread (`imagedatagenerator`) and with two worker threads
(`imagedatagenerator_workers2`) through `tf_keras.utils.OrderedEnqueuer(workers=2)`, the machinery
of tf_keras' `Model.fit(workers=2)`. It yields one gray channel where ours repeats it to three.

The sides alternate pass by pass in one process (`bench.timing.alternate`), at least 5 passes each
after one untimed warm-up pass each; every ratio is of the medians, with the best and worst pass
ratios, each side's process CPU time per image and the thread counts beside it.

`pipeline_cpu_vs_imagedatagenerator`: CPU ms per image of our uncached pipeline over the
single-thread generator's (goal <= 0.6: less work per image, whatever the core count).
`pipeline_vs_imagedatagenerator`: images/s of our uncached pipeline over the single-thread
generator's (wall clock; reported, goal >= 5 as before).
`cached_pipeline_vs_imagedatagenerator_workers2`: images/s of our cached epochs over the generator
with two workers (goal >= 5).
`cached_pipeline_vs_decode`: images/s of our cached epochs over a bare loop of `cv2.imread` +
`cv2.resize(INTER_AREA)` over the same files (decoding only; goal >= 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench import timing

N_IMAGES = 500
QUICK_IMAGES = 64
SOURCE_SIZE = 512
PRESET = "paper"
CLASSES = ("normal", "narrowed")


def _knee_phantom(rng, narrowed, size=SOURCE_SIZE):
    """A knee-like radiograph: soft tissue, femur and tibia with condyles, joint gap, texture."""
    from common import phantoms

    img = phantoms.blank((size, size), 0.05)
    cx = size / 2 + rng.uniform(-20, 20)
    cy = size / 2 + rng.uniform(-20, 20)
    s = size / 512.0
    phantoms.draw_ellipse(img, (cx, cy), (170 * s, 300 * s), 0, 0.28, "max")  # soft tissue
    gap = (6 if narrowed else 16) * s + rng.uniform(0, 3) * s
    femur_r = rng.uniform(48, 58) * s
    tibia_r = rng.uniform(50, 60) * s
    phantoms.draw_capsule(img, (cx, -60), (cx, cy - gap - 40 * s), femur_r, 0.72, "max")
    for side in (-1, 1):  # femoral condyles
        phantoms.draw_ellipse(
            img, (cx + side * 45 * s, cy - gap - 38 * s), (50 * s, 38 * s), 0, 0.78, "max"
        )
    phantoms.draw_polygon(  # tibial plateau
        img,
        [(cx - 105 * s, cy + gap), (cx + 105 * s, cy + gap), (cx + 60 * s, cy + gap + 70 * s),
         (cx - 60 * s, cy + gap + 70 * s)],
        0.74,
        "max",
    )  # fmt: skip
    phantoms.draw_capsule(img, (cx, cy + gap + 40 * s), (cx, size + 60), tibia_r, 0.7, "max")
    phantoms.draw_capsule(
        img, (cx + 75 * s, cy + gap + 50 * s), (cx + 80 * s, size + 60), 18 * s, 0.6, "max"
    )
    if narrowed:  # osteophytes at the joint margins
        for side in (-1, 1):
            phantoms.draw_ellipse(
                img, (cx + side * 100 * s, cy + gap + 4 * s), (12 * s, 7 * s), 0, 0.8, "max"
            )
    img = img + 0.04 * phantoms.smooth_noise((size, size), 6.0 * s, rng)
    img = phantoms.blur(phantoms.clip01(img), 1.2 * s)
    return phantoms.add_noise(img, 0.01, rng)


def _knee_phantom_cv2(rng, narrowed, size=SOURCE_SIZE):
    """The same kind of image drawn with OpenCV only (when `common.phantoms` is unavailable)."""
    import cv2

    img = np.full((size, size), 0.05, dtype=np.float32)
    cx = int(size / 2 + rng.uniform(-20, 20))
    cy = int(size / 2 + rng.uniform(-20, 20))
    gap = 6 if narrowed else 16
    cv2.ellipse(img, (cx, cy), (170, 300), 0, 0, 360, 0.28, -1)
    cv2.rectangle(img, (cx - 52, 0), (cx + 52, cy - gap - 40), 0.72, -1)
    for side in (-1, 1):
        cv2.ellipse(img, (cx + side * 45, cy - gap - 38), (50, 38), 0, 0, 360, 0.78, -1)
    cv2.rectangle(img, (cx - 100, cy + gap), (cx + 100, cy + gap + 30), 0.74, -1)
    cv2.rectangle(img, (cx - 55, cy + gap), (cx + 55, size), 0.7, -1)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.2), 0, 1)


def write_phantom_pngs(folder, n=N_IMAGES, seed=0):
    """Write `n` knee phantoms as 8-bit PNGs in class sub-folders (kept if already complete).

    Args:
        folder: destination; gets `normal/` and `narrowed/`.
        n: number of images.
        seed: random seed.

    Returns:
        (sorted list of paths, int labels).
    """
    import cv2

    folder = Path(folder)
    stamp = folder / f".complete_{n}_{seed}"
    names = [(CLASSES[i % 2], f"knee_{i:04d}.png") for i in range(n)]
    paths = [folder / c / name for c, name in names]
    if not stamp.exists():
        try:
            from common import phantoms  # noqa: F401

            draw = _knee_phantom
        except ImportError:
            draw = _knee_phantom_cv2
        rng = np.random.default_rng(seed)
        for path, (cls, _) in zip(paths, names):
            path.parent.mkdir(parents=True, exist_ok=True)
            image = draw(rng, narrowed=cls == "narrowed")
            pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
            tmp = path.with_name(f".{path.name}.tmp.png")
            if not cv2.imwrite(str(tmp), pixels):
                raise OSError(f"could not write {path}")
            os.replace(tmp, path)
        stamp.write_text("ok\n")
    labels = np.array([CLASSES.index(c) for c, _ in names], dtype=np.int32)
    return paths, labels


def _config():
    from kneeoa.model import resolve_config

    return resolve_config(PRESET)


def make_pipeline(paths, labels, *, cache):
    """kneeoa's training pipeline (`kneeoa.data.make_dataset`, paper preset, training=True)."""
    import pandas as pd

    from kneeoa.data import make_dataset

    config = _config()
    records = pd.DataFrame(
        {"path": [os.fspath(p) for p in paths], "crop": "full", "kl": np.asarray(labels) * 2}
    )
    return make_dataset(
        records,
        config=config,
        training=True,
        batch_size=int(config["batch_size"]),
        seed=0,
        cache=cache,
    )


def equalize_numpy(image):
    """`common.augment.equalize_histogram` in NumPy on a 0..255 float image (the generator's hook)."""
    values = image / 255.0
    index = np.clip(np.floor(values * 256).astype(np.int64), 0, 255)
    hist = np.bincount(index.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(hist)
    total = cdf[-1]
    cdf_min = cdf[hist > 0].min()
    if total <= cdf_min:
        return image
    lut = np.clip((cdf - cdf_min) / (total - cdf_min), 0.0, 1.0)
    return (lut[index] * 255.0).astype(image.dtype)


def make_image_data_generator(folder):
    """The papers' generator: tf_keras ImageDataGenerator.flow_from_directory, same settings."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    config = _config()
    generator = ImageDataGenerator(
        horizontal_flip=bool(config["augment_flip"]),
        rescale=1.0 / 255,
        preprocessing_function=equalize_numpy if config["histogram_equalization"] else None,
    )
    return generator.flow_from_directory(
        str(folder),
        target_size=tuple(config["image_size_hw"]),
        color_mode="grayscale",
        classes=list(CLASSES),
        class_mode="binary",
        batch_size=int(config["batch_size"]),
        shuffle=True,
        seed=0,
        interpolation="box",
    )


def _dataset_pass(ds):
    def run():
        n = 0
        for images, _ in ds:
            n += int(images.shape[0])
        return n

    return run


def _generator_pass(iterator):
    def run():
        n = 0
        for i in range(len(iterator)):
            images, _ = iterator[i]
            n += images.shape[0]
        iterator.on_epoch_end()
        return n

    return run


def _enqueuer_pass(iterator, workers):
    """One epoch of the generator through `OrderedEnqueuer` with `workers` threads (as
    tf_keras' `fit(workers=...)`); the enqueuer is started per epoch like `fit` does."""
    from tf_keras.utils import OrderedEnqueuer

    def run():
        enqueuer = OrderedEnqueuer(iterator, use_multiprocessing=False, shuffle=False)
        enqueuer.start(workers=workers, max_queue_size=10)
        try:
            batches = enqueuer.get()
            n = 0
            for _ in range(len(iterator)):
                images, _ = next(batches)
                n += images.shape[0]
        finally:
            enqueuer.stop()
        return n

    return run


def _cv2_pass(paths, size_hw):
    import cv2

    def run():
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            cv2.resize(image, size_hw[::-1], interpolation=cv2.INTER_AREA)
        return len(paths)

    return run


def _entry(goal, name_a, runs_a, name_b, runs_b, *, cpu=False, common):
    if cpu:  # CPU time per image of a over b's: lower is better
        value, pass_range = timing.ratio(runs_a, runs_b, cpu=True)
    else:  # wall time per image of b over a's = images/s of a over b's: higher is better
        value, pass_range = timing.ratio(runs_b, runs_a)
    speeds = {
        f"{name}_images_per_s": round(1e3 / timing.summarize(name, runs)[f"{name}_ms_per_image"], 1)
        for name, runs in ((name_a, runs_a), (name_b, runs_b))
    }
    return {
        "ratio": round(value, 3),
        "goal": goal,
        "measure": "CPU time per image" if cpu else "images/s (wall clock)",
        "pass_ratio_best_worst": pass_range,
        **speeds,
        **timing.summarize(name_a, runs_a),
        **timing.summarize(name_b, runs_b),
        **common,
    }


def run(workdir, *, quick=False, passes=timing.MIN_PASSES, n_images=None):
    """Measure the four entries side by side; see the module docstring.

    Args:
        workdir: folder for the phantom PNGs.
        quick: 64 images instead of 500 (for a smoke test; figures are noisier).
        passes: alternating passes per side (>= 5).
        n_images: override the number of images.

    Returns:
        dict of the four entries.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    n_images = int(n_images or (QUICK_IMAGES if quick else N_IMAGES))
    folder = Path(workdir) / "knees"
    paths, labels = write_phantom_pngs(folder, n=n_images)
    generator = make_image_data_generator(folder)
    if generator.samples != n_images:
        raise RuntimeError(
            f"flow_from_directory found {generator.samples} images, expected {n_images}"
        )
    uncached = make_pipeline(paths, labels, cache=False)
    cached = make_pipeline(paths, labels, cache=True)
    size_hw = tuple(_config()["image_size_hw"])
    sides = {
        "tf_data": _dataset_pass(uncached),
        "tf_data_cached": _dataset_pass(cached),
        "imagedatagenerator": _generator_pass(generator),
        "imagedatagenerator_workers2": _enqueuer_pass(generator, 2),
        "cv2_imread_resize": _cv2_pass(paths, size_hw),
    }
    for fn in sides.values():
        fn()  # warm-up: tracing, the cache filled, files in the page cache
    runs = timing.alternate(sides, passes)
    for name, passes_of_side in runs.items():
        for n, _, _ in passes_of_side:
            if n != n_images:
                raise RuntimeError(f"a pass of {name} saw {n} images, expected {n_images}")
    config = _config()
    common = {
        "n_images": n_images,
        "passes": int(passes),
        "preset": PRESET,
        "source_size": [SOURCE_SIZE, SOURCE_SIZE],
        "image_size_hw": list(size_hw),
        "batch_size": int(config["batch_size"]),
        "machine_shared_with_other_jobs": True,
        **timing.threads(),
    }
    return {
        "pipeline_cpu_vs_imagedatagenerator": _entry(
            "<= 0.6", "tf_data", runs["tf_data"], "imagedatagenerator",
            runs["imagedatagenerator"], cpu=True, common=common,
        ),
        "pipeline_vs_imagedatagenerator": _entry(
            ">= 5", "tf_data", runs["tf_data"], "imagedatagenerator",
            runs["imagedatagenerator"], common=common,
        ),
        "cached_pipeline_vs_imagedatagenerator_workers2": _entry(
            ">= 5", "tf_data_cached", runs["tf_data_cached"], "imagedatagenerator_workers2",
            runs["imagedatagenerator_workers2"], common=common,
        ),
        "cached_pipeline_vs_decode": _entry(
            ">= 2", "tf_data_cached", runs["tf_data_cached"], "cv2_imread_resize",
            runs["cv2_imread_resize"], common=common,
        ),
    }  # fmt: skip


if __name__ == "__main__":
    print(run(Path(__file__).resolve().parent / "_work" / "bench_pipeline"))
