"""Atomic writes: whole files or none, with and without the fsync; CSV text."""

import os

import pytest

from common import fileio


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path, durable, monkeypatch):
    synced = []
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: synced.append(fd))
    path = tmp_path / "a" / "b.txt"
    fileio.atomic_write_text(path, "old\r\n", durable=durable)
    fileio.atomic_write_bytes(path, b"new", durable=durable)
    assert path.read_bytes() == b"new"
    assert sorted(os.listdir(path.parent)) == ["b.txt"]
    assert len(synced) == (2 if durable else 0)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = fileio.atomic_write_text(tmp_path / "c.csv", "kept")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_text(path, "lost")
    assert path.read_text() == "kept" and os.listdir(tmp_path) == ["c.csv"]


def test_csv_text_quotes_and_uses_lf():
    text = fileio.csv_text(["id", "note"], [[1, "a,b"], [2, 'say "hi"']])
    assert text == 'id,note\n1,"a,b"\n2,"say ""hi"""\n'
