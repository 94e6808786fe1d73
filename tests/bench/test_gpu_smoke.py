"""`bench/gpu.py --smoke`: the GPU benchmark's code runs on a CPU (JAX CPU; torch if installed)."""

import importlib
import json
import os
import subprocess
import sys

from tests.test_backends import REPO_ROOT
from tests.test_backends import child_env

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
gpu = importlib.import_module("gpu")


def test_every_benchmarked_preset_exists():
    for name, spec in gpu.MODELS.items():
        presets = importlib.import_module(f"{spec['package']}.presets").PRESETS
        assert spec["preset"] in presets, name
        if spec["smoke"]:
            assert spec["smoke"]["preset"] in presets, name


def test_bf16_peaks_by_device_name():
    assert gpu.bf16_peak_tflops("NVIDIA H200") == 989.4
    assert gpu.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.bf16_peak_tflops("cpu") is None


def test_smoke_run_writes_results(tmp_path):
    out = tmp_path / "gpu-results.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--models", "spinenet", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    ours = [r for r in results["runs"] if r["impl"] == "keras-jax"]
    assert [r["precision"] for r in ours] == ["float32", "bfloat16"]
    for run in ours:
        assert run["status"] == "ok", run
        assert run["tensorflow_imported"] is False
        assert run["steps_per_s"] > 0 and run["images_per_s"] == run["steps_per_s"] * 2
        assert run["train_flops_per_step"] == 3 * run["forward_flops"] > 0
        assert run["params"] > 0
    peers = [r for r in results["runs"] if r["impl"] == "torch"]
    assert len(peers) == 2
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert all(r["status"].startswith("skipped (torch") for r in peers)
    else:
        assert all(r["status"] == "ok" for r in peers)
    assert "spinenet" in proc.stdout and "keras-jax" in proc.stdout
