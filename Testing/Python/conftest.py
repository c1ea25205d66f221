"""Shared pytest fixtures. Tests use tiny volumes and run in seconds; real data from ../shared
is used where present and the tests that need it skip cleanly where it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("DEEPREG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
OASIS_2D = SHARED_DATA / "neurite-oasis-2d"
IXI_2MM = SHARED_DATA / "ixi-t1-2mm"

# The Slicer-free libraries, importable even without `pip install -e .`
for sub in ("DeepRegAblation", "DeepRegAblationTraining"):
    path = str(REPO_ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """One thread per test process (pytest-xdist runs two) and a fixed seed."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture
def oasis_2d_dir() -> Path:
    if not (OASIS_2D / "subjects.txt").exists() and not any(OASIS_2D.glob("OASIS_*")):
        pytest.skip(f"real neurite-OASIS 2D data not found at {OASIS_2D}")
    return OASIS_2D


@pytest.fixture
def ixi_dir() -> Path:
    if not any(IXI_2MM.glob("*-T1_ds.nii.gz")):
        pytest.skip(f"real IXI 2 mm data not found at {IXI_2MM}")
    return IXI_2MM
