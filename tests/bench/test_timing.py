"""Tests of `bench.timing` (alternating passes, medians, ratios) and of the pipeline bench's peer."""

import numpy as np
import pytest

from bench import timing


def test_alternate_runs_the_sides_in_turn_and_refuses_fewer_than_five_passes():
    order = []
    sides = {"a": lambda: order.append("a") or 10, "b": lambda: order.append("b") or 20}
    runs = timing.alternate(sides, passes=5)
    assert order == ["a", "b"] * 5
    assert [n for n, _, _ in runs["a"]] == [10] * 5 and [n for n, _, _ in runs["b"]] == [20] * 5
    assert all(wall >= 0 and cpu >= 0 for _, wall, cpu in runs["a"] + runs["b"])
    with pytest.raises(ValueError, match="passes must be >= 5"):
        timing.alternate(sides, passes=4)


def test_ratio_is_of_medians_not_of_the_best_pass():
    # one outlier pass of `a` (0.1 s) must not decide the ratio: the median pass (1.0 s) does
    a = [(10, wall, wall / 2) for wall in (1.0, 0.1, 1.2, 1.0, 0.9)]
    b = [(10, 2.0, 4.0)] * 5
    value, pass_range = timing.ratio(b, a)
    assert value == pytest.approx(2.0)  # median 1.0 s against 2.0 s; the best pass would say 20
    assert pass_range == [pytest.approx(2.0 / 1.2, abs=1e-3), pytest.approx(20.0)]
    cpu, _ = timing.ratio(a, b, cpu=True)
    assert cpu == pytest.approx(0.5 / 4.0)
    figures = timing.summarize("a", a)
    assert figures["a_ms_per_image"] == pytest.approx(100.0)
    assert figures["a_ms_per_image_best_worst"] == [pytest.approx(10.0), pytest.approx(120.0)]
    assert figures["a_cpu_ms_per_image"] == pytest.approx(50.0)
    assert figures["a_pass_s"] == [1.0, 0.1, 1.2, 1.0, 0.9]


def test_threads_are_reported():
    threads = timing.threads()
    assert threads["cpu_count"] >= 1
    assert {"tf_intra_op_threads", "tf_inter_op_threads", "omp_num_threads"} <= set(threads)


def test_the_generator_peer_equalises_like_the_pipeline():
    """The reference generator does the same work as kneeoa's pipeline (equalisation included)."""
    from bench.bench_pipeline import equalize_numpy
    from common.augment import equalize_histogram

    rng = np.random.default_rng(0)
    image = np.round(rng.beta(2, 5, size=(40, 30, 1)) * 255).astype(np.float32)
    ours = equalize_histogram(image / 255.0).numpy() * 255.0
    np.testing.assert_allclose(equalize_numpy(image), ours, atol=1e-3)
    assert not np.allclose(equalize_numpy(image), image)  # control: it does change the image
    flat = np.full((4, 4, 1), 7.0, dtype=np.float32)
    np.testing.assert_array_equal(equalize_numpy(flat), flat)


def test_quick_mode_calls_the_small_versions_and_writes_apart(tmp_path, monkeypatch):
    from bench import __main__ as harness

    calls = []

    class Module:
        @staticmethod
        def run(workdir, **kwargs):
            calls.append(kwargs)
            return {"x_vs_y": {"ratio": 1.0, "goal": ">= 1"}}

    monkeypatch.setattr(harness.importlib, "import_module", lambda name: Module)
    monkeypatch.setattr(harness, "discover", lambda: ["bench_fake"])
    monkeypatch.setattr(harness, "QUICK_RESULTS_PATH", tmp_path / "quick.json")
    monkeypatch.setattr(harness, "RESULTS_PATH", tmp_path / "results.json")
    monkeypatch.setattr(harness, "WORK_DIR", tmp_path / "work")
    assert harness.main(["--quick"]) == 0
    assert calls == [{"quick": True}]
    assert (tmp_path / "quick.json").exists() and not (tmp_path / "results.json").exists()
    assert harness.main([]) == 0
    assert calls[-1] == {} and (tmp_path / "results.json").exists()
