"""GPU benchmark: the five papers' models under Keras + JAX beside their PyTorch (torchvision) peers.

Run on a machine with an NVIDIA GPU, JAX with CUDA, PyTorch with torchvision, numpy, keras and
keras-hub; TensorFlow is not needed (nor imported), nor a network or a data set:

    python bench/gpu.py                 # writes bench/gpu-results.json and prints a table
    python bench/gpu.py --smoke         # CPU: demo presets, tiny shapes, one step; torch if present

For each paper model at its paper input size and batch size (`MODELS`), training steps per second
and images per second of:

- the suite's model (`PKG.build_model`, `KERAS_BACKEND=jax`) in float32 and `mixed_bfloat16`: a
  jitted Keras stateless training step (`model.stateless_call`, `jax.value_and_grad`,
  `optimizer.stateless_apply`: what Keras' own JAX trainer runs inside `fit`), Adam, mean squared
  error on every output, timed with `jax.block_until_ready`;
- the same network from torchvision in float32 and bf16 autocast, `torch.compile`d when that
  works (else eager, recorded), timed with `torch.cuda.synchronize`.

Warm-up steps (compilation included) are excluded; the figure is the median of `--windows` (>= 5)
timed windows of `--steps` steps on the same random batch. Each model's training FLOPs are counted
once per network (3x the forward FLOPs: XLA's cost analysis for ours, PyTorch's FlopCounterMode
for the peers) and give the achieved TFLOP/s and its share of the GPU's dense bf16 peak. Peak GPU
memory: each Keras + JAX run in a process of its own (`peak_bytes_in_use`, preallocation off);
torch's `max_memory_allocated` after `reset_peak_memory_stats`. A time budget (`--budget-s`, 450 s)
skips the runs that would not fit, so the whole benchmark ends within 8 minutes.

What it does not measure: the suite's TensorFlow training engine (`common.training`, tf.distribute)
and its tf.data input pipelines; the keras-hub detector of deepra (the RA figures are the three
EfficientNet joint models). Loss and input pipeline are the same trivial ones on both sides.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "bench", "gpu-results.json")

# name -> the suite's model (package, preset, paper batch), its torchvision peer, and the smoke
# version (demo preset, batch 2, the peer at a tiny input).
MODELS = {
    "spinenet": {
        "package": "spinenet",
        "preset": "paper",
        "batch": 256,  # §4
        "peer": "vgg_m",
        "smoke": {"preset": "demo", "peer_input": (9, 112, 224)},
    },
    "kneeoa": {
        "package": "kneeoa",
        "preset": "paper",
        "batch": 64,  # §3.5
        "peer": "vgg16_block4",
        "smoke": {"preset": "demo", "peer_input": (3, 64, 48)},
    },
    "mura": {
        "package": "mura",
        "preset": "paper",
        "batch": 8,  # slides: batch 8
        "peer": "densenet169",
        "smoke": {"preset": "demo", "peer_input": (3, 64, 64)},
    },
    "boneage": {
        "package": "boneage",
        "preset": "paper",
        "batch": 32,  # §V
        "peer": "inception_v3",
        "smoke": {"preset": "demo", "peer_input": (3, 96, 96)},
    },
    "boneage-baseline": {
        "package": "boneage",
        "preset": "baseline",
        "batch": 32,
        "peer": "inception_v3",
        "smoke": None,  # the same code as `boneage`
    },
    "deepra-b3": {
        "package": "deepra",
        "preset": "hand-erosion",
        "batch": 32,  # §4.3.1
        "peer": "efficientnet_b3",
        "smoke": {"preset": "demo", "peer_input": (3, 64, 64)},
    },
    "deepra-b4": {
        "package": "deepra",
        "preset": "foot-erosion",
        "batch": 32,
        "peer": "efficientnet_b4",
        "smoke": None,
    },
    "deepra-b5": {
        "package": "deepra",
        "preset": "wrist",
        "batch": 32,
        "peer": "efficientnet_b5",
        "smoke": None,
    },
}
PRECISIONS = ("float32", "bfloat16")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; the first
# name contained in the device name wins. Override with --peak-tflops.
BF16_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("A6000", 154.8),
)


def bf16_peak_tflops(device_name):
    """The dense bf16 peak of a GPU from its name, or None when the table does not know it."""
    for key, value in BF16_PEAK_TFLOPS:
        if key.lower() in str(device_name).lower():
            return value
    return None


def model_spec(name, smoke):
    """The run's model: preset, batch and peer input shape (channels first), smoke or paper."""
    spec = dict(MODELS[name])
    if smoke:
        spec.update(spec.pop("smoke") or {}, batch=2)
    spec.pop("smoke", None)
    return spec


def time_windows(step, sync, *, warmup, windows, steps):
    """Runs `warmup` steps, then `windows` timed windows of `steps` steps; returns their seconds."""
    for _ in range(warmup):
        sync(step())
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        out = None
        for _ in range(steps):
            out = step()
        sync(out)
        times.append(time.perf_counter() - start)
    return times


def summarise(times, *, steps, batch, train_flops, peak_tflops):
    """Steps/s, images/s, TFLOP/s and share of the bf16 peak from the median window."""
    median = statistics.median(times)
    steps_per_s = steps / median
    tflops = None if not train_flops else train_flops * steps_per_s / 1e12
    return {
        "windows_s": [round(t, 6) for t in times],
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * batch,
        "tflops": tflops,
        "share_of_bf16_peak": None if tflops is None or not peak_tflops else tflops / peak_tflops,
    }


# --------------------------------------------------------------------------- Keras + JAX (child)


def _flops(compiled):
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0)) or None


def run_keras_jax(name, precision, args):
    """One Keras + JAX run of model `name` (in a process of its own); returns its result dict."""
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, REPO_ROOT)
    import importlib

    import jax
    import keras
    import numpy as np

    spec = model_spec(name, args.smoke)
    keras.mixed_precision.set_dtype_policy(
        "mixed_bfloat16" if precision == "bfloat16" else "float32"
    )
    package = importlib.import_module(spec["package"])
    model = package.build_model(spec["preset"])
    batch = spec["batch"]
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in model.inputs:
        shape = (batch, *[int(d) for d in tensor.shape[1:]])
        inputs[tensor.name.split(":")[0]] = rng.uniform(0, 1, size=shape).astype("float32")
    targets = [
        rng.uniform(0, 1, size=(batch, *[int(d) for d in t.shape[1:]])).astype("float32")
        for t in model.outputs
    ]
    x = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)

    def as_list(outputs):
        if isinstance(outputs, dict):
            return [outputs[k] for k in model.output_names]
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    def loss_fn(trainable, non_trainable, x, y):
        outputs, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        loss = sum(
            jax.numpy.mean(jax.numpy.square(o.astype("float32") - t))
            for o, t in zip(as_list(outputs), y, strict=True)
        )
        return loss, non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, x, y):
        trainable, non_trainable, optimizer_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_vars)

    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    device = jax.devices()[0]
    x_dev = jax.device_put(x, device)
    y_dev = jax.device_put(targets, device)
    # FLOPs counted once per network (the parent asks the first run only): the forward's, which
    # the parent multiplies by 3 for forward + backward
    forward_flops = None
    if args.count_flops:
        forward_flops = _flops(jax.jit(forward).lower(state[0], state[1], x_dev).compile())
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, x_dev, y_dev).compile()
    holder = {"state": state}

    def step():
        loss, holder["state"] = compiled(holder["state"], x_dev, y_dev)
        return loss

    def sync(loss):
        jax.block_until_ready((loss, holder["state"]))

    times = time_windows(step, sync, warmup=args.warmup, windows=args.windows, steps=args.steps)
    stats = device.memory_stats() or {}
    return {
        "params": int(model.count_params()),
        "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "forward_flops": forward_flops,
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "device": getattr(device, "device_kind", str(device)),
        "compiled": "jax.jit",
        "times": times,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


# --------------------------------------------------------------------------- PyTorch peers


def build_peer(kind, spec):
    """The torchvision (or plain `torch.nn`) network of a paper model; output heads as a list."""
    import torch
    from torch import nn
    from torchvision import models

    class Heads(nn.Module):
        def __init__(self, trunk, heads):
            super().__init__()
            self.trunk = trunk
            self.heads = nn.ModuleList(heads)

        def forward(self, x):
            features = self.trunk(x)
            return [head(features) for head in self.heads]

    if kind == "vgg16_block4":
        # torchvision VGG-16 features up to block4's pool (index 23), global average, linear head
        trunk = nn.Sequential(
            *list(models.vgg16(weights=None).features)[:24],
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        return Heads(trunk, [nn.Linear(512, 5), nn.Linear(512, 5)])
    if kind == "vgg_m":
        # SpineNet's VGG-M 1024 (spinenet.model's table): 9 slices in, six task heads after conv5
        channels, height, width = spec["peer_input"]
        trunk = nn.Sequential(
            nn.Conv2d(channels, 96, 7, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.ZeroPad2d(1),
            nn.Conv2d(96, 256, 5, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(256, 512, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(512, 512, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(512, 512, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = trunk(torch.zeros(1, channels, height, width)).shape[1]
        heads = [
            nn.Sequential(
                nn.Linear(flat, 4096),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(4096, 1024),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(1024, classes),
            )
            for classes in (5, 4, 2, 2, 2, 2)
        ]
        return Heads(trunk, heads)
    if kind == "inception_v3":
        net = models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1)
        return Heads(net, [nn.Identity()])
    if kind == "densenet169":
        return Heads(models.densenet169(weights=None, num_classes=1), [nn.Identity()])
    if kind.startswith("efficientnet_"):
        outputs = {"efficientnet_b3": 2, "efficientnet_b4": 1, "efficientnet_b5": 6}[kind]
        return Heads(getattr(models, kind)(weights=None, num_classes=outputs), [nn.Identity()])
    raise ValueError(f"Unknown peer '{kind}'")


def peer_input_shape(name, smoke):
    """`(C, H, W)` of a peer's input: the paper model's input, channels first."""
    spec = model_spec(name, smoke)
    if smoke:
        return tuple(spec["peer_input"])
    return {
        "spinenet": (9, 112, 224),
        "kneeoa": (3, 320, 224),
        "mura": (3, 320, 320),
        "boneage": (3, 300, 300),
        "boneage-baseline": (3, 300, 300),
        "deepra-b3": (3, 256, 256),
        "deepra-b4": (3, 256, 256),
        "deepra-b5": (3, 300, 300),
    }[name]


def run_torch(name, precision, args, *, flops_cache):
    """One PyTorch run of model `name`'s peer; returns its result dict."""
    import torch

    spec = model_spec(name, args.smoke)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    torch.manual_seed(0)
    shape = peer_input_shape(name, args.smoke)
    spec["peer_input"] = shape
    net = build_peer(spec["peer"], spec).to(device).to(memory_format=torch.channels_last)
    net.train()
    batch = spec["batch"]
    x = torch.rand(batch, *shape, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad():
        targets = [torch.rand_like(o.float()) for o in net(x[:1].clone())]
        targets = [t.expand(batch, *t.shape[1:]).contiguous() for t in targets]
    params = sum(p.numel() for p in net.parameters())
    if spec["peer"] not in flops_cache:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net.eval()
            net(x)
            net.train()
        flops_cache[spec["peer"]] = float(counter.get_total_flops()) or None
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    use_bf16 = precision == "bfloat16"
    runner = net
    compiled = "eager"
    if args.torch_compile and device.type == "cuda":
        try:
            runner = torch.compile(net)
            compiled = "torch.compile"
        except Exception as exc:  # pragma: no cover - depends on the machine's toolchain
            compiled = f"eager (torch.compile failed: {type(exc).__name__})"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = runner(x)
        loss = sum(((o.float() - t) ** 2).mean() for o, t in zip(outputs, targets, strict=True))
        loss.backward()
        optimizer.step()
        return loss

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        times = time_windows(step, sync, warmup=args.warmup, windows=args.windows, steps=args.steps)
    except Exception as exc:  # pragma: no cover - a compile failure shows at the first call
        if runner is net:
            raise
        runner, compiled = net, f"eager (torch.compile failed: {type(exc).__name__})"
        times = time_windows(step, sync, warmup=args.warmup, windows=args.windows, steps=args.steps)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "params": int(params),
        "input_shapes": {"x": [batch, *shape]},
        "forward_flops": flops_cache[spec["peer"]],
        "peak_memory_bytes": peak,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "compiled": compiled,
        "times": times,
    }


# --------------------------------------------------------------------------- driver


def _child(args):
    result = run_keras_jax(args.child, args.precision, args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _run_child(name, precision, args, timeout, *, count_flops):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "jax"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # peak_bytes_in_use is then this run's
    if args.smoke:
        env["JAX_PLATFORMS"] = "cpu"
        # XLA's CPU compiler without its expensive passes: the smoke run checks code, not speed
        env.setdefault(
            "XLA_FLAGS",
            "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        )
    command = (
        [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            "--precision",
            precision,
            "--warmup",
            str(args.warmup),
            "--windows",
            str(args.windows),
            "--steps",
            str(args.steps),
        ]
        + (["--smoke"] if args.smoke else [])
        + (["--count-flops"] if count_flops else [])
    )
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:300]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _versions():
    versions = {"python": platform.python_version()}
    from importlib import metadata

    for dist in ("jax", "jaxlib", "keras", "keras-hub", "torch", "torchvision", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _torch_available():
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def run_all(args):
    """Runs every selected model on both sides; returns the results document."""
    start = time.perf_counter()
    names = args.models or [n for n in MODELS if not args.smoke or MODELS[n]["smoke"]]
    have_torch = _torch_available()
    runs, comparisons, notes = [], [], []
    if not have_torch:
        notes.append("torch/torchvision not installed: the PyTorch peers were skipped")
    notes.append(
        "boneage: torchvision's inception_v3 builder takes no width multiplier, so the peer of "
        "the paper's width-scaled BoneAgeNet (beta 1.4, 4/3/3 blocks) is the plain Inception v3; "
        "compare it with boneage-baseline (beta 1, Keras' Inception v3 layout) like for like"
    )
    flops_cache = {}
    gpu, peak = None, args.peak_tflops
    for name in names:
        spec = model_spec(name, args.smoke)
        for precision in args.precisions:
            pair = {}
            for impl in ("keras-jax", "torch"):
                record = {
                    "model": name,
                    "impl": impl,
                    "precision": precision,
                    "preset": spec["preset"],
                    "batch": spec["batch"],
                }
                elapsed = time.perf_counter() - start
                if impl == "torch" and not have_torch:
                    record["status"] = "skipped (torch not installed)"
                elif elapsed > args.budget_s:
                    record["status"] = f"skipped (time budget {args.budget_s:.0f} s spent)"
                else:
                    try:
                        if impl == "keras-jax":
                            timeout = max(60.0, args.budget_s + 60 - elapsed)
                            key = ("keras-jax", name)
                            raw = _run_child(
                                name, precision, args, timeout, count_flops=key not in flops_cache
                            )
                            if raw.get("forward_flops"):
                                flops_cache[key] = raw["forward_flops"]
                            raw["forward_flops"] = flops_cache.get(key)
                        else:
                            raw = run_torch(name, precision, args, flops_cache=flops_cache)
                        record["status"] = "ok"
                        record["peer"] = spec["peer"] if impl == "torch" else None
                        gpu = gpu or raw["device"]
                        if peak is None and gpu:
                            peak = bf16_peak_tflops(gpu)
                        flops = raw.get("forward_flops")
                        record.update(
                            {k: v for k, v in raw.items() if k != "times"},
                            train_flops_per_step=None if not flops else 3 * flops,
                        )
                        record.update(
                            summarise(
                                raw["times"],
                                steps=args.steps,
                                batch=spec["batch"],
                                train_flops=record["train_flops_per_step"],
                                peak_tflops=peak,
                            )
                        )
                    except Exception as exc:  # a failed run is a row, not the end of the run
                        record["status"] = f"failed: {type(exc).__name__}: {exc}"[:400]
                runs.append(record)
                pair[impl] = record
            ours, peer = pair.get("keras-jax", {}), pair.get("torch", {})
            if ours.get("status") == "ok" and peer.get("status") == "ok":
                comparisons.append(
                    {
                        "model": name,
                        "precision": precision,
                        "ratio_images_per_s": ours["images_per_s"] / peer["images_per_s"],
                        "ratio_tflops": None
                        if not (ours["tflops"] and peer["tflops"])
                        else ours["tflops"] / peer["tflops"],
                    }
                )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "smoke": bool(args.smoke),
        "gpu": gpu,
        "bf16_peak_tflops": peak,
        "protocol": {
            "warmup_steps": args.warmup,
            "windows": args.windows,
            "steps_per_window": args.steps,
            "statistic": "median window",
            "train_flops": "3 x forward FLOPs, counted once per network",
        },
        "versions": _versions(),
        "wall_s": time.perf_counter() - start,
        "runs": runs,
        "comparisons": comparisons,
        "notes": notes,
    }


def format_table(results):
    """The results as a plain-text table (one row per run, then the ratios)."""
    header = f"{'model':<17} {'impl':<9} {'prec':<8} {'batch':>5} {'steps/s':>8} {'img/s':>8} "
    header += f"{'TFLOP/s':>8} {'%peak':>6} {'mem GiB':>8}  status"
    lines = [f"GPU: {results['gpu']} (bf16 peak {results['bf16_peak_tflops']} TFLOP/s)", header]

    def fmt(value, spec):
        if isinstance(value, (int, float)):
            return format(value, spec)
        width = spec.split(".")[0]
        return format("-", f">{width}") if width else "-"

    for r in results["runs"]:
        mem = r.get("peak_memory_bytes")
        share = r.get("share_of_bf16_peak")
        lines.append(
            f"{r['model']:<17} {r['impl']:<9} {r['precision'][:8]:<8} {r['batch']:>5} "
            f"{fmt(r.get('steps_per_s'), '8.2f')} {fmt(r.get('images_per_s'), '8.1f')} "
            f"{fmt(r.get('tflops'), '8.2f')} {fmt(None if share is None else 100 * share, '6.1f')} "
            f"{fmt(None if mem is None else mem / 2**30, '8.2f')}  {r['status']}"
        )
    for c in results["comparisons"]:
        lines.append(
            f"ours/peer {c['model']:<17} {c['precision']:<8} images/s {c['ratio_images_per_s']:.2f}"
            f"  TFLOP/s {fmt(c['ratio_tflops'], '.2f')}"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU check: demo presets, one step")
    parser.add_argument("--models", type=lambda s: s.split(","), default=None, help="a,b,...")
    parser.add_argument(
        "--precisions",
        type=lambda s: s.split(","),
        default=list(PRECISIONS),
        help="float32,bfloat16 (default both)",
    )
    parser.add_argument("--out", default=None, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3)")
    parser.add_argument("--windows", type=int, default=None, help="timed windows (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="steps per window (default 10)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip runs after this")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak")
    parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (1, 1, 1) if args.smoke else (3, 5, 10)
    for key, value in zip(("warmup", "windows", "steps"), defaults, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.smoke and args.windows < 5:
        parser.error("--windows must be at least 5 (the figure is a median)")
    if set(args.precisions) - set(PRECISIONS):
        parser.error(f"--precisions takes {list(PRECISIONS)}")
    unknown = sorted(set(args.models or []) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; available: {sorted(MODELS)}")
    return args


def main(argv=None):
    """Runs the benchmark (or one Keras + JAX child run); returns the exit status."""
    args = parse_args(argv)
    if args.child:
        return _child(args)
    results = run_all(args)
    print(format_table(results))
    out = args.out or (None if args.smoke else DEFAULT_OUT)
    if out:
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, out)
        print(f"Results written to {out}")
    return (
        0
        if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results["runs"])
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
