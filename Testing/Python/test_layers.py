"""The layers of the two libraries: no module imports a module of a higher layer (issue 22).

Every ``.py`` of ``DeepRegAblationLib`` and ``DeepRegAblationTrainingLib`` is parsed with :mod:`ast`;
each import (absolute or relative, at module level, inside a function or under ``TYPE_CHECKING``) is
resolved to a unit of the two libraries: a top-level module or package (``registration``, ``data``, ...),
or a submodule that :data:`LAYERS` places on its own (``benchmarks.reliability``). :data:`LAYERS` lists
the units from the bottom up; a unit may import its own layer and those below, never one above. The
training library sits above all of the core, so the core never imports it. docs/architecture.md draws
the same layers and places every module (checked at the end).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = "DeepRegAblationLib"
TRAINING = "DeepRegAblationTrainingLib"
LIBRARIES = {CORE: REPO / "DeepRegAblation" / CORE, TRAINING: REPO / "DeepRegAblationTraining" / TRAINING}

Layer = Tuple[str, Tuple[str, ...]]  # (library, units)

LAYERS: Tuple[Layer, ...] = (
    # the core, DeepRegAblationLib
    (CORE, ("options", "progress")),                  # user options and the progress protocol: plain Python
    (CORE, ("fields", "geometry", "resampling", "imageio", "nifti_header", "nifti_writer", "checkpoint_files", "percentiles")),
    (CORE, ("losses", "models")),                     # losses; networks, variants, checkpoints, the resolver
    (CORE, ("metrics", "slab_metrics")),              # evaluation metrics (SSIM shared with losses.similarity)
    (CORE, ("registration",)),                        # register(), refine(), the result type
    (CORE, ("outputs",)),                             # exports and snapshots of a result
    (CORE, ("jobs", "panel", "scene")),               # the Slicer module's Lib: job runner, panel logic, MRML
    (CORE, ("inference",)),                           # the public re-export of the registration API
    # the training library, above all of the core
    (TRAINING, ("augment", "data", "optional_packages", "output_lock")),
    (TRAINING, ("training", "evaluation")),
    (TRAINING, ("experiments", "benchmarks", "reports", "register_job", "register_outputs")),
    (TRAINING, ("commands", "cli")),
    (TRAINING, ("benchmarks.reliability", "benchmarks.faults")),  # drive every entry point, the command line included
)

Unit = Tuple[str, str]  # (library, unit)


def layer_index(layers: Sequence[Layer]) -> Dict[Unit, int]:
    """(library, unit) -> its layer's position, 0 at the bottom."""
    index: Dict[Unit, int] = {}
    for position, (library, units) in enumerate(layers):
        for unit in units:
            assert (library, unit) not in index, f"{library}.{unit} is placed twice"
            index[(library, unit)] = position
    return index


def unit_of(dotted: str, index: Mapping[Unit, int]) -> Optional[Unit]:
    """The most specific placed unit that contains the dotted module ``dotted`` (``None``: outside the
    libraries, a library's root package, or a unit no layer names: :func:`unplaced_units` reports those)."""
    parts = dotted.split(".")
    for length in range(len(parts), 1, -1):
        unit = (parts[0], ".".join(parts[1:length]))
        if unit in index:
            return unit
    return None


def module_name(path: Path, library: str, root: Path) -> Tuple[str, bool]:
    """``(dotted module name, is a package __init__)`` of ``path`` inside ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([library] + parts), is_package


def imported_modules(tree: ast.AST, name: str, is_package: bool) -> List[Tuple[int, List[str]]]:
    """``(line, candidate dotted names)`` of every import in ``tree`` (module ``name``), relative ones
    resolved; ``from a import b`` gives ``[a.b, a]`` (``b`` may be a submodule or a name in ``a``)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: List[Tuple[int, List[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, [f"{module}.{alias.name}", module]) for alias in node.names]
    return found


def library_files(roots: Mapping[str, Path]):
    for library, root in roots.items():
        for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
            yield library, root, path


def upward_imports(roots: Mapping[str, Path], layers: Sequence[Layer]) -> List[str]:
    """One line per import of a unit of a higher layer than the importing module's."""
    index = layer_index(layers)
    problems = []
    for library, root, path in library_files(roots):
        name, is_package = module_name(path, library, root)
        source = unit_of(name, index)
        if source is None:
            continue  # the root package (root_package_imports), or an unplaced unit (unplaced_units)
        for line, candidates in imported_modules(ast.parse(path.read_text(encoding="utf-8")), name, is_package):
            target = next((unit_of(c, index) for c in candidates if unit_of(c, index) is not None), None)
            if target is None or target == source:
                continue
            if index[target] > index[source]:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {'.'.join(source)} (layer {index[source]}) "
                                f"imports {'.'.join(target)} (layer {index[target]})")
    return problems


def unplaced_units(roots: Mapping[str, Path], layers: Sequence[Layer]) -> List[str]:
    """Top-level modules and packages of the libraries that no layer names."""
    index = layer_index(layers)
    missing = []
    for library, root in roots.items():
        for child in sorted(root.iterdir()):
            unit = child.stem if child.suffix == ".py" else child.name
            if unit == "__init__" or unit.startswith((".", "__")):
                continue
            if (child.suffix == ".py" or (child / "__init__.py").is_file()) and (library, unit) not in index:
                missing.append(f"{library}.{unit}")
    return missing


def root_package_imports(roots: Mapping[str, Path]) -> List[str]:
    """Imports in a library's root ``__init__.py`` (kept empty: importing the library imports nothing)."""
    problems = []
    for library, root in roots.items():
        tree = ast.parse((root / "__init__.py").read_text(encoding="utf-8"))
        problems += [f"{library}/__init__.py:{line} imports {names[-1]}"
                     for line, names in imported_modules(tree, library, True)]
    return problems


# --------------------------------------------------------------------------- the libraries
def test_every_module_of_the_libraries_is_placed_in_a_layer():
    assert unplaced_units(LIBRARIES, LAYERS) == []
    index = layer_index(LAYERS)
    for library, unit in index:  # and every placed unit exists
        path = LIBRARIES[library].joinpath(*unit.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), f"{library}.{unit}"


def test_no_module_imports_a_higher_layer():
    problems = upward_imports(LIBRARIES, LAYERS)
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_the_core_never_imports_the_training_library():
    core_layers = [position for position, (library, _) in enumerate(LAYERS) if library == CORE]
    training_layers = [position for position, (library, _) in enumerate(LAYERS) if library == TRAINING]
    assert max(core_layers) < min(training_layers)  # so an import of it would be an upward import
    problems = [f"{path.relative_to(REPO)}:{line} imports {names[-1]}"
                for library, root, path in library_files({CORE: LIBRARIES[CORE]})
                for line, names in imported_modules(ast.parse(path.read_text(encoding="utf-8")),
                                                    *module_name(path, library, root))
                if any(n.split(".")[0] == TRAINING for n in names)]
    assert not problems, "\n".join(problems)


def test_the_root_packages_import_nothing():
    assert root_package_imports(LIBRARIES) == []


# --------------------------------------------------------------------------- the checker itself
def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def planted(tmp_path):
    """Two small libraries laid out like the real ones, with only downward and same-layer imports."""
    low, high = tmp_path / "low" / "LowLib", tmp_path / "high" / "HighLib"
    _write(low, "__init__.py", '"""Low."""\n')
    _write(low, "base.py", "import math\n")
    _write(low, "peer.py", "from . import base\n")  # same layer
    _write(low, "pkg/__init__.py", "from .inner import thing\n")
    _write(low, "pkg/inner.py", "from ..base import math\n\nthing = 1\n")
    _write(low, "top.py", "from LowLib.pkg import thing\nfrom LowLib import peer\n")
    _write(high, "__init__.py", "")
    _write(high, "app.py", "from LowLib import top\n")
    _write(high, "special.py", "from . import app\n")
    roots = {"LowLib": low, "HighLib": high}
    layers = (("LowLib", ("base", "peer")), ("LowLib", ("pkg",)), ("LowLib", ("top",)),
              ("HighLib", ("app",)), ("HighLib", ("special",)))
    return roots, layers


def test_the_checker_passes_a_clean_tree(planted):
    roots, layers = planted
    assert upward_imports(roots, layers) == []
    assert unplaced_units(roots, layers) == []
    assert root_package_imports(roots) == []


@pytest.mark.parametrize("relative, text, expected", [
    ("LowLib/base.py", "import LowLib.top\n", "LowLib.base (layer 0) imports LowLib.top (layer 2)"),
    ("LowLib/base.py", "from LowLib import pkg\n", "LowLib.base (layer 0) imports LowLib.pkg (layer 1)"),
    ("LowLib/pkg/inner.py", "from ..top import x\n", "LowLib.pkg (layer 1) imports LowLib.top (layer 2)"),
    ("LowLib/pkg/__init__.py", "from .. import top\n", "LowLib.pkg (layer 1) imports LowLib.top (layer 2)"),
    ("LowLib/peer.py", "def f():\n    from .pkg.inner import thing\n    return thing\n",
     "LowLib.peer (layer 0) imports LowLib.pkg (layer 1)"),
    ("LowLib/top.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from HighLib.app import y\n",
     "LowLib.top (layer 2) imports HighLib.app (layer 3)"),
    ("HighLib/app.py", "from . import special\n", "HighLib.app (layer 3) imports HighLib.special (layer 4)"),
])
def test_the_checker_catches_a_planted_upward_import(planted, relative, text, expected):
    roots, layers = planted
    library, rest = relative.split("/", 1)
    _write(roots[library], rest, text)
    problems = upward_imports(roots, layers)
    assert len(problems) == 1 and problems[0].endswith(expected), problems


def test_the_checker_places_a_submodule_on_its_own(planted):
    """A submodule named in the layers (like benchmarks.reliability) is its own unit: its package may not
    import it, and it may import what lies below it."""
    roots, layers = planted
    layers = layers + (("LowLib", ("pkg.extra",)),)
    _write(roots["LowLib"], "pkg/extra.py", "from LowLib import top\n")
    assert upward_imports(roots, layers) == []
    _write(roots["LowLib"], "pkg/inner.py", "from . import extra\n")
    problems = upward_imports(roots, layers)
    assert len(problems) == 1 and problems[0].endswith("LowLib.pkg (layer 1) imports LowLib.pkg.extra (layer 5)")


def test_the_checker_reports_an_unplaced_module_and_imports_in_a_root_package(planted):
    roots, layers = planted
    _write(roots["LowLib"], "new.py", "")
    _write(roots["LowLib"], "newpkg/__init__.py", "")
    _write(roots["HighLib"], "__init__.py", "from .app import top\n")
    assert unplaced_units(roots, layers) == ["LowLib.new", "LowLib.newpkg"]
    assert root_package_imports(roots) == ["HighLib/__init__.py:1 imports HighLib.app"]


# --------------------------------------------------------------------------- the page that draws them
ARCHITECTURE = REPO / "docs" / "architecture.md"


def test_docs_architecture_places_every_module_and_draws_these_layers():
    """docs/architecture.md's tree names every module, and its layer tables list the units of LAYERS in order."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    tree = text[text.index("## The tree"):text.index("## Layers")]
    words = set(re.findall(r"[A-Za-z_]+", tree))
    missing = [f"{library}/{path.relative_to(root).as_posix()}" for library, root, path in library_files(LIBRARIES)
               if path.stem != "__init__" and path.stem not in words]
    assert not missing, f"not in the tree of {ARCHITECTURE.name}: {missing}"
    layers = text[text.index("## Layers"):text.index("## Conventions")]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", layers, flags=re.M)
    drawn = [tuple(re.findall(r"`([a-z_.]+)`", units)) for _, units in rows]
    assert drawn == [units for _, units in LAYERS]
    assert [int(number) for number, _ in rows] == list(range(1, len(LAYERS) + 1))
