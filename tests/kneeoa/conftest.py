"""Shared fixtures: one small phantom data set in both layouts per test session."""

import pytest

from kneeoa.synthetic import write_phantom_dataset

NUM_SUBJECTS = 12


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    return write_phantom_dataset(
        tmp_path_factory.mktemp("kneeoa_phantoms"), num_subjects=NUM_SUBJECTS, seed=0, layout="both"
    )
