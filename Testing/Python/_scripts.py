"""The repository's experiment scripts (``scripts/brains3d/*.py``), loaded as modules for their tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "brains3d"


def brains3d_script(name: str) -> ModuleType:
    """``scripts/brains3d/<name>.py`` loaded as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
