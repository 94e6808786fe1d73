"""Tests of the benchmark harness `bench.__main__`: discovery, selection, merging, table, writing."""

import json

import pytest

from bench import __main__ as harness

PREVIOUS = {
    "lc2d_speedup_vs_tf_keras": {
        "ratio": 2.5,
        "goal": ">= 2",
        "ours_ms": 1.0,
        "module": "bench_lc2d",
    },
    "pipeline_vs_imagedatagenerator": {"ratio": 3.0, "goal": ">= 5", "module": "bench_pipeline"},
    "old_entry_gone_from_pipeline": {"ratio": 1.0, "goal": ">= 1", "module": "bench_pipeline"},
    "untagged_from_an_old_file": {"ratio": 9.0, "goal": ">= 1"},
}
NEW = harness.check_entries(
    "bench_pipeline",
    {
        "pipeline_vs_imagedatagenerator": {
            "ratio": 6,
            "goal": ">= 5",
            "tf_data_images_per_s": 600.0,
        },
        "cached_pipeline_vs_decode": {"ratio": 1.5, "goal": ">= 2", "n_images": 500},
    },
)


def test_merge_replaces_modules_that_ran_and_keeps_the_others():
    merged = harness.merge(PREVIOUS, NEW, ["bench_pipeline"])
    assert list(merged) == sorted(merged)
    assert set(merged) == {
        "lc2d_speedup_vs_tf_keras",
        "pipeline_vs_imagedatagenerator",
        "cached_pipeline_vs_decode",
        "untagged_from_an_old_file",
    }
    assert merged["pipeline_vs_imagedatagenerator"]["ratio"] == 6.0
    assert merged["lc2d_speedup_vs_tf_keras"] == PREVIOUS["lc2d_speedup_vs_tf_keras"]


def test_merge_keeps_entries_of_a_module_that_failed():
    merged = harness.merge(PREVIOUS, {}, [])
    assert merged == dict(sorted(PREVIOUS.items()))


def test_check_entries_tags_and_validates():
    assert NEW["cached_pipeline_vs_decode"]["module"] == "bench_pipeline"
    assert isinstance(NEW["pipeline_vs_imagedatagenerator"]["ratio"], float)
    with pytest.raises(ValueError, match="needs 'ratio' and 'goal'"):
        harness.check_entries("bench_x", {"a": {"ratio": 1.0}})
    with pytest.raises(ValueError, match="non-empty dict"):
        harness.check_entries("bench_x", {})


@pytest.mark.parametrize(
    "ratio, goal, expected",
    [
        (5.0, ">= 5", True),
        (4.99, ">= 5", False),
        (2.1, "≥2", True),
        (0.05, "<= 0.1", True),
        (0.2, "< 0.1", False),
        (1.0, "fast", None),
    ],
)
def test_goal_met(ratio, goal, expected):
    assert harness.goal_met(ratio, goal) is expected


def test_format_table():
    table = harness.format_table(harness.merge(PREVIOUS, NEW, ["bench_pipeline"]))
    lines = table.splitlines()
    assert lines[0].split() == ["name", "ratio", "goal", "met", "raw", "figures"]
    assert len(lines) == 2 + 4
    row = next(line for line in lines if line.startswith("cached_pipeline_vs_decode"))
    assert row.split()[1:5] == ["1.5", ">=", "2", "NO"]
    assert "n_images=500" in row and "module" not in row
    row = next(line for line in lines if line.startswith("pipeline_vs_imagedatagenerator"))
    assert " yes " in row and "tf_data_images_per_s=600" in row


def test_discover_and_select(tmp_path):
    for name in ["bench_b.py", "bench_a.py", "helpers.py", "__main__.py"]:
        (tmp_path / name).write_text("")
    modules = harness.discover(tmp_path)
    assert modules == ["bench_a", "bench_b"]
    assert harness.select(modules, None) == modules
    assert harness.select(modules, ["b", "bench_a"]) == ["bench_a", "bench_b"]
    with pytest.raises(
        ValueError, match=r"Unknown benchmark 'c'. Available: \['bench_a', 'bench_b'\]"
    ):
        harness.select(modules, ["c"])
    assert "bench_pipeline" in harness.discover()


def test_write_and_load_results(tmp_path):
    path = tmp_path / "out" / "results.json"
    assert harness.load_results(path) == {}
    harness.write_results(path, PREVIOUS)
    assert json.loads(path.read_text()) == PREVIOUS
    assert harness.load_results(path) == PREVIOUS
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary left
    path.write_text("{not json")
    assert harness.load_results(path) == {}


def test_main_unknown_module_exits_2_without_writing(tmp_path, capsys):
    path = tmp_path / "results.json"
    assert harness.main(["--only", "nope", "--results", str(path)]) == 2
    assert "Unknown benchmark 'nope'" in capsys.readouterr().err
    assert not path.exists()
