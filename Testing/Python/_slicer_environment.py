"""Processes that look like the ones Slicer starts, for the tests of the extension's Slicer code paths.

Each test runs a fresh Python whose start-up (a ``sitecustomize`` module, :func:`run_python`) makes it
look like Slicer's in the respect under test:

- :data:`PYTHONSLICER`: ``import slicer`` gives the MRML classes but not ``slicer.util`` (Slicer's
  ``Base/Python/slicer/__init__.py`` does not import it; only the main application's start-up does,
  while the ``slicer-core`` meta-package used here imports every submodule);
- :data:`SLICER_PACKAGES_ONLY`: the packages Slicer's Python does not ship are unimportable (it ships
  numpy, scipy, SimpleITK, pillow and VTK: Slicer ``SuperBuild/External_python-*.cmake``, v5.8.0);
- :data:`NO_TORCH_NO_RESOURCE`: a Slicer without PyTorch yet, or Windows (no ``resource``);
- :data:`IN_SLICER_APP`: the application itself (``Slicer --no-main-window --python-script``):
  ``slicer.app`` is set and ``slicer.util.exit`` records the status it is given instead of quitting, as
  Slicer only quits once its event loop runs.

A module is made unimportable with ``sys.modules[name] = None`` (``import`` then raises
``ModuleNotFoundError`` naming it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "DeepRegAblationTraining" / "DeepRegAblationTraining.py"

NOT_IN_SLICERS_PYTHON = ("nibabel", "matplotlib", "nilearn", "tqdm", "monai", "voxelmorph", "neurite", "h5py")
"""Installed here (the project's test extras), not in Slicer's Python."""

PYTHONSLICER = """
    import sys
    import slicer  # slicer-core imports every submodule; Slicer's own package does not import slicer.util
    del slicer.util
    del sys.modules["slicer.util"]
"""
SLICER_PACKAGES_ONLY = f"""
    import sys
    for _name in {NOT_IN_SLICERS_PYTHON!r}:  # not shipped with Slicer's Python
        sys.modules[_name] = None
"""
NO_TORCH_NO_RESOURCE = """
    import sys
    sys.modules["torch"] = None  # PyTorch not installed yet (the PyTorch extension installs it on demand)
    sys.modules["resource"] = None  # Windows
"""
IN_SLICER_APP = """
    import os, sys
    import slicer
    import slicer.util
    slicer.app = object()  # what in_slicer_application() looks for

    def _exit(status=0):  # Slicer quits later, from its event loop: record the request only
        with open(os.environ["EXIT_STATUS_FILE"], "w") as f:
            f.write(str(status))

    slicer.util.exit = _exit
"""


def run_python(tmp_path: Path, startup: str, args: Sequence, timeout: float = 300, **env_extra) -> subprocess.CompletedProcess:
    """``python <args>`` in a fresh process that runs ``startup`` first (as its sitecustomize), the two
    libraries on ``PYTHONPATH``, in ``tmp_path``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(startup))
    paths = [str(site), str(REPO / "DeepRegAblation"), str(REPO / "DeepRegAblationTraining")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, *[str(a) for a in args]], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=timeout)
