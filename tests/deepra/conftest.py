"""Shared fixtures of the deepra tests: one small phantom data set per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from deepra.synthetic import write_phantom_dataset  # noqa: E402


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A phantom RA2-DREAM data set: 4 training and 2 test patients (24 films)."""
    return write_phantom_dataset(tmp_path_factory.mktemp("ra2") / "ra2", num_subjects=4, seed=0)
