"""Static checks of the Slicer side of the extension, run outside Slicer.

The Slicer application cannot run here, so the GUI module is checked by reading it: the Qt Designer
file, the widget names the code uses, the parameter-node bindings against the widget types that
Slicer 5.8's ``parameterNodeWrapper`` GUI connectors accept, the CMake file lists against the
disk, Python 3.9 compatibility (Slicer 5.8 ships Python 3.9), the extension description JSON and
the layering (no Qt below the widget). The training launcher is importable and is run for real.
"""
from __future__ import annotations

import ast
import enum
import importlib
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
GUI_DIR = REPO / "DeepRegAblation"
TRAINING_DIR = REPO / "DeepRegAblationTraining"
GUI_MODULE = GUI_DIR / "DeepRegAblation.py"
TRAINING_MODULE = TRAINING_DIR / "DeepRegAblationTraining.py"
UI_FILE = GUI_DIR / "Resources" / "UI" / "DeepRegAblation.ui"
EXTENSION_JSON = REPO / "DeepRegAblation.json"
MODULE_DIRS = {"DeepRegAblation": GUI_DIR, "DeepRegAblationTraining": TRAINING_DIR}
LIB_DIRS = (GUI_DIR / "DeepRegAblationLib", TRAINING_DIR / "DeepRegAblationTrainingLib")

# Widgets a user interacts with: each one in the .ui must be used by the code.
INTERACTIVE_CLASSES = {
    "QComboBox", "ctkComboBox", "QPushButton", "QToolButton", "ctkCheckablePushButton", "QRadioButton",
    "QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox", "QCheckBox", "ctkCheckBox", "QSlider",
    "ctkSliderWidget", "ctkDoubleSlider", "qMRMLSliderWidget", "ctkRangeWidget", "ctkDoubleRangeSlider",
    "ctkPathLineEdit", "ctkDirectoryButton", "QLineEdit", "qMRMLNodeComboBox",
}
# Widget classes each parameter kind can be bound to (Slicer 5.8 parameterNodeWrapper/guiConnectors.py),
# with the annotation a bounded widget needs.
CONNECTABLE = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
              "qMRMLSpinBox"},
    "enum": {"QComboBox", "ctkComboBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
    "FloatRange": {"ctkRangeWidget", "ctkDoubleRangeSlider", "qMRMLRangeWidget"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}
# (a range widget without Default() makes 5.8's connector call RangeBounds.validate(0), which fails)
NEEDS_ANNOTATIONS = {"ctkSliderWidget": {"WithinRange"}, "qMRMLSliderWidget": {"WithinRange"},
                     "ctkRangeWidget": {"RangeBounds", "Default"}, "ctkDoubleRangeSlider": {"RangeBounds", "Default"},
                     "qMRMLRangeWidget": {"RangeBounds", "Default"}}
TYPING_NAMES_AFTER_39 = {"TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "Self", "LiteralString", "Never",
                         "Required", "NotRequired", "Unpack", "TypeVarTuple", "assert_never", "reveal_type"}
QT_MODULES = {"qt", "ctk", "PythonQt", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}


# --------------------------------------------------------------------------- helpers
def read_ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def ui_widgets(root: ET.Element) -> Dict[str, ET.Element]:
    return {w.get("name"): w for w in root.iter("widget")}


def widget_string_property(widget: ET.Element, name: str) -> Optional[str]:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            node = prop.find("string")
            return node.text if node is not None else None
    return None


def widget_bool_property(widget: ET.Element, name: str) -> Optional[bool]:
    for prop in widget.findall("property"):
        if prop.get("name") == name and prop.find("bool") is not None:
            return prop.find("bool").text.strip() == "true"
    return None


def gui_source() -> str:
    return GUI_MODULE.read_text(encoding="utf-8")


def code_ui_names(source: str) -> Set[str]:
    """Widget names used as ``<something>.ui.<name>`` (self.ui.x in the widget, widget.ui.x in tests)."""
    return set(re.findall(r"\.ui\.([A-Za-z_]\w*)", source))


def decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def parameter_node_class(tree: ast.Module) -> ast.ClassDef:
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(decorator_name(d) == "parameterNodeWrapper" for d in n.decorator_list)]
    assert len(classes) == 1, "expected exactly one @parameterNodeWrapper class in DeepRegAblation.py"
    return classes[0]


def enum_classes(tree: ast.Module) -> Dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)
            and any(ast.unparse(b).split(".")[-1] == "Enum" for b in n.bases)}


def annotation_kind(annotation: ast.expr, enums: Set[str]) -> Tuple[str, List[str], bool]:
    """(kind, extra annotation names, optional) of a parameter-node field annotation."""
    extras: List[str] = []
    optional = False
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).split(".")[-1] == "Annotated":
        elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        annotation = elements[0]
        extras = [decorator_name(e) for e in elements[1:]]
    text = ast.unparse(annotation)
    if text.startswith(("Optional[", "typing.Optional[")) or "None" in re.findall(r"\w+", text):
        optional = True
    names = [n for n in re.findall(r"[A-Za-z_]\w*", text) if n not in ("Optional", "Union", "typing", "None")]
    if names and all(n.startswith("vtkMRML") and n.endswith("Node") for n in names):
        return "node", extras, optional
    if len(names) == 1:
        name = names[0]
        if name in enums:
            return "enum", extras, optional
        if name in ("bool", "int", "float", "str", "FloatRange"):
            return name, extras, optional
        if name in ("Path", "PurePath", "PosixPath", "WindowsPath"):
            return "Path", extras, optional
    return "unknown:" + text, extras, optional


def library_imports(tree: ast.Module) -> Dict[str, str]:
    """``{name: module}`` of the names the module file imports at top level from the libraries."""
    return {alias.asname or alias.name: node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "DeepRegAblationLib"
            for alias in node.names}


def imported_enums(tree: ast.Module) -> Set[str]:
    """The names the module file imports from the libraries that are ``enum.Enum`` classes (imported here)."""
    names = set()
    for name, module in library_imports(tree).items():
        value = getattr(importlib.import_module(module), name, None)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            names.add(name)
    return names


def parameter_fields() -> Dict[str, Tuple[str, List[str], bool]]:
    tree = ast.parse(gui_source())
    enums = set(enum_classes(tree)) | imported_enums(tree)
    cls = parameter_node_class(tree)
    return {stmt.target.id: annotation_kind(stmt.annotation, enums)
            for stmt in cls.body if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


def cmake_commands(text: str) -> List[Tuple[str, List[str]]]:
    """(command, arguments) of a CMake file: quoted and unquoted arguments, comments skipped."""
    commands: List[Tuple[str, List[str]]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        match = re.compile(r"([A-Za-z_]\w*)\s*\(").match(text, i)
        if not match or (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            i += 1
            continue
        name, i, args = match.group(1), match.end(), []
        while i < n and text[i] != ")":
            if text[i].isspace():
                i += 1
            elif text[i] == "#":
                i = text.find("\n", i)
            elif text[i] == '"':
                j, value = i + 1, []
                while text[j] != '"':
                    if text[j] == "\\":
                        j += 1
                    value.append(text[j])
                    j += 1
                args.append("".join(value))
                i = j + 1
            else:
                j = i
                while j < n and not text[j].isspace() and text[j] not in ')"':
                    j += 1
                args.append(text[i:j])
                i = j
        commands.append((name.lower(), args))
        i += 1
    return commands


def cmake_sets(path: Path) -> Dict[str, List[str]]:
    return {args[0]: args[1:] for name, args in cmake_commands(path.read_text(encoding="utf-8"))
            if name == "set" and args}


def module_files_on_disk(module_dir: Path) -> Tuple[Set[str], Set[str]]:
    """(python scripts, resources) relative to the module folder, as the CMake lists should name them."""
    scripts, resources = set(), set()
    for path in module_dir.rglob("*"):
        rel = path.relative_to(module_dir)
        if not path.is_file() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts[0] == "Testing" or rel.name == "CMakeLists.txt" or rel.suffix == ".pyc":
            continue
        if rel.suffix == ".py":
            scripts.add(rel.as_posix())
        elif rel.parts[0] == "Resources":
            resources.add(rel.as_posix())
    return scripts, resources


def module_python_files() -> List[Path]:
    files = [GUI_MODULE, TRAINING_MODULE]
    for lib in LIB_DIRS:
        files += sorted(p for p in lib.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def png_size(path: Path) -> Tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def load_training_launcher():
    spec = importlib.util.spec_from_file_location("DeepRegAblationTraining_launcher", TRAINING_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the .ui file
def test_ui_parses_and_has_the_sections():
    root = read_ui()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "DeepRegAblation"
    widgets = ui_widgets(root)
    sections = {widget_string_property(w, "text") for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"}
    assert {"Inputs", "Model", "Display"} <= sections
    classes = {name: w.get("class") for name, w in widgets.items()}
    assert classes["applyButton"] == "QPushButton"
    assert classes["progressBar"] == "QProgressBar"
    assert classes["statusLog"] == "QPlainTextEdit"
    assert classes["resultsTableView"] == "qMRMLTableView"
    assert classes["checkpointPathLineEdit"] == "ctkPathLineEdit"
    assert classes["refineIterationsSpinBox"] == "QSpinBox"


def test_code_uses_only_widgets_that_exist_in_the_ui():
    names = set(ui_widgets(read_ui()))
    used = code_ui_names(gui_source())
    assert used, "the widget code should use self.ui.<name>"
    missing = sorted(used - names)
    assert not missing, f"widgets used by DeepRegAblation.py but absent from the .ui: {missing}"


def test_every_interactive_widget_is_used_or_bound():
    widgets = ui_widgets(read_ui())
    fields = parameter_fields()
    used = code_ui_names(gui_source())
    unused = []
    for name, widget in widgets.items():
        if widget.get("class") not in INTERACTIVE_CLASSES:
            continue
        bound = widget_string_property(widget, "SlicerParameterName")
        if name not in used and bound not in fields:
            unused.append(f"{name} ({widget.get('class')})")
    assert not unused, f"interactive widgets neither used by the code nor bound to a parameter: {unused}"


def test_parameter_bindings_match_slicer_gui_connectors():
    """Every SlicerParameterName names a field whose type Slicer 5.8 can connect to that widget class."""
    fields = parameter_fields()
    problems = []
    bound_fields = set()
    for name, widget in ui_widgets(read_ui()).items():
        parameter = widget_string_property(widget, "SlicerParameterName")
        if parameter is None:
            continue
        bound_fields.add(parameter)
        if parameter not in fields:
            problems.append(f"{name}: parameter {parameter!r} is not a field of the parameter node")
            continue
        kind, extras, optional = fields[parameter]
        cls = widget.get("class")
        if cls not in CONNECTABLE.get(kind, set()):
            problems.append(f"{name}: a {cls} cannot be connected to {parameter} ({kind})")
        for needed in sorted(NEEDS_ANNOTATIONS.get(cls, set()) - set(extras)):
            problems.append(f"{name}: {parameter} needs an Annotated {needed}(...) for a {cls}")
        if cls == "qMRMLNodeComboBox" and bool(widget_bool_property(widget, "noneEnabled")) != optional:
            problems.append(f"{name}: noneEnabled must be {optional} for the {'optional' if optional else 'required'} {parameter}")
    assert not problems, "\n".join(problems)
    assert len(bound_fields) >= 12, "most settings should persist through the parameter node"


def test_custom_widgets_are_slicer_or_ctk_and_declared():
    root = read_ui()
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    for cls, element in declared.items():
        assert cls.startswith(("qMRML", "qSlicer", "ctk")), f"custom widget {cls} is not a Slicer/CTK class"
        assert element.findtext("header") == f"{cls}.h"
    used_classes = {w.get("class") for w in root.iter("widget")}
    undeclared = sorted(c for c in used_classes if not re.match(r"Q[A-Z]", c) and c not in declared)
    assert not undeclared, f"widget classes used but not declared as custom widgets: {undeclared}"
    assert set(declared) <= used_classes, "declared custom widgets that are not used"


def test_mrml_widgets_receive_the_scene():
    """Each qMRML widget gets the scene through mrmlSceneChanged -> setMRMLScene (set up by uiWidget.setMRMLScene)."""
    root = read_ui()
    connected = {
        c.findtext("receiver") for c in root.iter("connection")
        if c.findtext("sender") == "DeepRegAblation" and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {name for name, w in ui_widgets(read_ui()).items()
                    if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}
    assert mrml_widgets and mrml_widgets <= connected, f"not given the scene: {sorted(mrml_widgets - connected)}"
    assert "setMRMLScene(slicer.mrmlScene)" in gui_source()


# The combo-box choices as the module defined them before they moved to DeepRegAblationLib.options: the
# parameter node stores a member by name, so saved scenes load only while names and values stay.
SAVED_CHOICES = {
    "VariantChoice": [("baseline", "baseline"), ("regloss", "regloss"), ("affine_basic", "affine_basic"),
                      ("affine_enhanced", "affine_enhanced"), ("compare_all", "all")],
    "DeviceChoice": [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")],
    "RefineChoice": [("off", "off"), ("recommended", "recommended"), ("thorough", "thorough"), ("custom", "custom")],
    "AlignmentChoice": [("auto", "auto"), ("com", "com"), ("none", "none")],
}


def test_module_choices_are_the_options_enums_with_the_saved_names_and_values():
    from DeepRegAblationLib import options
    from DeepRegAblationLib.models.variants import VARIANTS

    imported = library_imports(ast.parse(gui_source()))
    for name, members in SAVED_CHOICES.items():
        assert imported.get(name) == "DeepRegAblationLib.options", f"{name} must come from DeepRegAblationLib.options"
        choice = getattr(options, name)
        assert [(member.name, member.value) for member in choice] == members
    labels = {choice: [member.label() for member in getattr(options, choice)] for choice in SAVED_CHOICES}
    assert labels == {  # the combo-box texts (the widget finds the CUDA item by its text)
        "VariantChoice": ["baseline: U-Net, similarity only", "regloss: U-Net + regularization losses",
                          "affine_basic: affine + U-Net, similarity only",
                          "affine_enhanced: affine + U-Net + regularization", "Compare all four variants"],
        "DeviceChoice": ["Auto (GPU if available)", "CPU", "CUDA GPU"],
        "RefineChoice": ["Off (network only, fastest)", "Recommended (fast)", "Thorough (slower, to full resolution)",
                         "Custom iterations"],
        "AlignmentChoice": ["Automatic (when the centres are far apart)", "Always align centres of mass",
                            "Never (use the volumes where they lie)"],
    }
    assert [c.value for c in options.VariantChoice][:-1] == list(VARIANTS) == list(options.VARIANT_IDS)
    assert list(options.DeviceChoice)[-1] is options.DeviceChoice.cuda  # the widget removes the last item
    assert not {"VariantChoice", "DeviceChoice", "RefineChoice", "AlignmentChoice"} & set(enum_classes(ast.parse(gui_source())))


def test_gui_module_does_not_import_torch_at_load_time():
    """PyTorch is checked on Apply through PyTorchUtils, never when Slicer loads the module: what the module
    imports at top level from the libraries imports, for real, with PyTorch unimportable."""
    tree = ast.parse(gui_source())
    top_level = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            top_level.append(node.module or "")
    heavy = [m for m in top_level if m.split(".")[0] in ("torch", "DeepRegAblationTrainingLib", "PyTorchUtils")]
    assert not heavy, f"imported when the module loads: {heavy}"
    libraries = sorted({m for m in top_level if m.split(".")[0] == "DeepRegAblationLib"}
                       | {f"{m}.{name}" for name, m in library_imports(tree).items() if m == "DeepRegAblationLib"})
    assert "DeepRegAblationLib.panel" in libraries and "DeepRegAblationLib.jobs" in libraries
    probe = ("import sys; sys.modules['torch'] = None; import importlib\n"
             f"for name in {libraries!r}: importlib.import_module(name)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": os.pathsep.join([str(GUI_DIR), str(TRAINING_DIR)])})
    assert result.returncode == 0, f"importing {libraries} without PyTorch failed:\n{result.stderr}"
    assert result.stdout.strip() == "[]", f"the module's libraries imported {result.stdout.strip()}"
    assert "installTorch(askConfirmation=True, torchVersionRequirement=" in gui_source()


SCRIPTS = sorted((REPO / "scripts" / "brains3d").glob("*.py"))


def private_imports(path: Path) -> List[str]:
    """``from x import _y`` and ``import x._y`` in ``path`` (``from __future__`` aside), one line each."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            private = [a.name for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            private = [a.name for a in node.names if any(part.startswith("_") for part in a.name.split("."))]
        else:
            continue
        if private:
            problems.append(f"{path.relative_to(REPO) if REPO in path.parents else path.name}:{node.lineno} "
                            f"imports {private} from {getattr(node, 'module', None) or 'its package'}")
    return problems


def test_private_import_check_catches_private_names(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from __future__ import annotations\nfrom a.b import public, _private\nimport a._c\n"
                   "def f():\n    from . import _inner\n")
    assert len(private_imports(bad)) == 3
    good = tmp_path / "good.py"
    good.write_text("from __future__ import annotations\nfrom a.b import public as _alias\nimport a.b\n")
    assert private_imports(good) == []


def test_no_module_library_or_script_imports_a_private_name():
    """No ``from x import _y`` in the two Slicer modules, both libraries and scripts/brains3d (issue 22)."""
    assert len(module_python_files()) > 100 and SCRIPTS
    problems = [line for path in module_python_files() + SCRIPTS for line in private_imports(path)]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- CMake
@pytest.mark.parametrize("module", sorted(MODULE_DIRS))
def test_module_cmake_lists_match_the_files_on_disk(module):
    module_dir = MODULE_DIRS[module]
    sets = cmake_sets(module_dir / "CMakeLists.txt")
    assert sets["MODULE_NAME"] == [module]

    def expand(entries):
        return {e.replace("${MODULE_NAME}", module) for e in entries}

    listed_scripts, listed_resources = expand(sets["MODULE_PYTHON_SCRIPTS"]), expand(sets["MODULE_PYTHON_RESOURCES"])
    scripts, resources = module_files_on_disk(module_dir)
    assert f"{module}.py" in scripts and f"Resources/Icons/{module}.png" in resources
    message = (f"{module}/CMakeLists.txt is out of date. On disk:\n"
               f"MODULE_PYTHON_SCRIPTS: {sorted(scripts)}\nMODULE_PYTHON_RESOURCES: {sorted(resources)}")
    assert listed_scripts == scripts, message + f"\nnot listed: {sorted(scripts - listed_scripts)}; missing: {sorted(listed_scripts - scripts)}"
    assert listed_resources == resources, message + f"\nnot listed: {sorted(resources - listed_resources)}; missing: {sorted(listed_resources - resources)}"
    commands = cmake_commands((module_dir / "CMakeLists.txt").read_text(encoding="utf-8"))
    build = [args for name, args in commands if name == "slicermacrobuildscriptedmodule"]
    assert build and {"NAME", "SCRIPTS", "RESOURCES"} <= set(build[0])
    assert ("slicer_add_python_unittest", ["SCRIPT", "${MODULE_NAME}.py"]) in commands


def test_extension_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    commands = cmake_commands(text)
    sets = {args[0]: args[1:] for name, args in commands if name == "set" and args}
    assert commands[0][0] == "cmake_minimum_required"
    assert ("project", ["DeepRegAblation"]) in commands
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert sets.get(key) and all(sets[key]), f"{key} is not set"
    assert sets["EXTENSION_CATEGORY"] == ["Registration"]
    assert "PyTorch" in sets["EXTENSION_DEPENDS"]
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    assert ("include", ["${Slicer_USE_FILE}"]) in commands
    subdirs = [args[0] for name, args in commands if name == "add_subdirectory"]
    assert subdirs == ["DeepRegAblation", "DeepRegAblationTraining"]
    assert ("include", ["${Slicer_EXTENSION_CPACK}"]) in commands
    assert sets["EXTENSION_ICONURL"][0].endswith("/Resources/Icons/DeepRegAblation.png")


def test_icons_are_128_pixel_pngs():
    for path in (REPO / "Resources/Icons/DeepRegAblation.png", GUI_DIR / "Resources/Icons/DeepRegAblation.png",
                 TRAINING_DIR / "Resources/Icons/DeepRegAblationTraining.png"):
        assert png_size(path) == (128, 128), path


# --------------------------------------------------------------------------- extension description
def test_extension_json_follows_the_catalog_schema():
    entry = json.loads(EXTENSION_JSON.read_text(encoding="utf-8"))
    # slicer-extension-catalog-entry-schema v1.0.2 (Slicer/ExtensionsIndex/schemas)
    allowed = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
               "enabled": bool, "tier": int}
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert set(entry) <= set(allowed), f"keys outside the schema: {sorted(set(entry) - set(allowed))}"
    for key, value in entry.items():
        assert isinstance(value, allowed[key]), f"{key} must be a {allowed[key].__name__}"
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?$", entry["$schema"])
    assert entry["build_dependencies"] == ["PyTorch"]
    assert 1 <= entry["tier"] <= 5
    assert entry.get("scm_type", "git") in ("git", "local")
    sets = cmake_sets(REPO / "CMakeLists.txt")
    assert entry["category"] == sets["EXTENSION_CATEGORY"][0]
    homepage = sets["EXTENSION_HOMEPAGE"][0].replace("${DEEPREGABLATION_REPOSITORY}", sets["DEEPREGABLATION_REPOSITORY"][0])
    assert entry["scm_url"].removesuffix(".git") == homepage


# --------------------------------------------------------------------------- Python 3.9 and layering
def _bitor_in(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))


def _evaluated_annotations(tree: ast.Module, has_future: bool) -> List[ast.expr]:
    """Annotations that Python evaluates: all of them without ``from __future__ import annotations``;
    with it, those of classes whose hints are read at runtime (parameter-node wrappers)."""
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(decorator_name(d) in ("parameterNodeWrapper", "parameterPack")
                                                  for d in node.decorator_list):
            annotations += [s.annotation for s in node.body if isinstance(s, ast.AnnAssign)]
        if has_future:
            continue
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    annotations.append(arg.annotation)
            if node.returns is not None:
                annotations.append(node.returns)
    return annotations


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_module_code_runs_on_python_39(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    if hasattr(ast, "Match"):
        assert not any(isinstance(n, ast.Match) for n in ast.walk(tree)), "match statement (Python 3.10+)"
    has_future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                     and any(a.name == "annotations" for a in n.names) for n in tree.body)
    problems = []
    inside_annotations = {id(n) for a in _evaluated_annotations(tree, False) for n in ast.walk(a)}
    for annotation in _evaluated_annotations(tree, has_future):
        if _bitor_in(annotation):
            problems.append(f"line {annotation.lineno}: 'X | Y' annotation evaluated at runtime")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = decorator_name(node)
            if name in ("isinstance", "issubclass") and len(node.args) == 2 and _bitor_in(node.args[1]):
                problems.append(f"line {node.lineno}: {name}(x, A | B) needs Python 3.10")
            if name == "zip" and any(k.arg == "strict" for k in node.keywords):
                problems.append(f"line {node.lineno}: zip(strict=...) needs Python 3.10")
            if name == "dataclass" and any(k.arg in ("slots", "kw_only") for k in node.keywords):
                problems.append(f"line {node.lineno}: dataclass(slots/kw_only) needs Python 3.10")
        if isinstance(node, ast.Subscript) and _bitor_in(node.slice) and id(node) not in inside_annotations:
            problems.append(f"line {node.lineno}: 'X | Y' inside a subscript is evaluated at runtime")
        if isinstance(node, ast.ImportFrom) and node.module in ("typing",):
            late = [a.name for a in node.names if a.name in TYPING_NAMES_AFTER_39]
            if late:
                problems.append(f"line {node.lineno}: typing.{late} is not in Python 3.9")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


SCENE_PACKAGE = LIB_DIRS[0] / "scene"


def is_scene_adapter(path: Path) -> bool:
    """A module of the MRML adapter, ``DeepRegAblationLib/scene/`` (the one place that may import slicer)."""
    return SCENE_PACKAGE in path.parents


def test_the_scene_adapter_is_the_scene_package():
    assert (SCENE_PACKAGE / "__init__.py").is_file()
    assert not (LIB_DIRS[0] / "scene.py").exists()
    assert is_scene_adapter(SCENE_PACKAGE / "nodes.py") and is_scene_adapter(SCENE_PACKAGE / "__init__.py")
    assert not is_scene_adapter(LIB_DIRS[0] / "panel.py")
    assert not is_scene_adapter(LIB_DIRS[1] / "scene" / "nodes.py")


@pytest.mark.parametrize("lib", LIB_DIRS, ids=lambda p: p.name)
def test_libraries_import_no_qt_and_only_the_scene_adapter_imports_mrml(lib):
    problems = []
    for path in sorted(p for p in lib.rglob("*.py") if "__pycache__" not in p.parts):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                if module in QT_MODULES or module.split(".")[0] in ("qt", "ctk", "PythonQt") or module.startswith("qSlicer"):
                    problems.append(f"{path.name}:{node.lineno} imports {module} (Qt belongs to the widget only)")
                if module.split(".")[0] == "slicer" and not is_scene_adapter(path):
                    problems.append(f"{path.relative_to(lib)}:{node.lineno} imports {module} "
                                    f"(only the scene package may use MRML)")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- training launcher
def test_training_launcher_splits_arguments_at_double_dash():
    launcher = load_training_launcher()
    assert launcher.script_arguments(["DeepRegAblationTraining.py", "--", "train", "--epochs", "2"]) == ["train", "--epochs", "2"]
    assert launcher.script_arguments(["DeepRegAblationTraining.py", "--", "evaluate", "--", "x"]) == ["evaluate", "--", "x"]
    assert launcher.script_arguments(["DeepRegAblationTraining.py", "demo", "--out", "d"]) == ["demo", "--out", "d"]
    assert launcher.script_arguments(["DeepRegAblationTraining.py"]) == []
    # inside Slicer, "--" is Slicer's --ignore-rest flag: Slicer consumes it and passes the rest on
    assert launcher.script_arguments(["x.py", "evaluate", "--", "y"], inside_slicer=True) == ["evaluate", "--", "y"]
    assert launcher.script_arguments(["x.py", "--", "train"], inside_slicer=True) == ["train"]
    folders = launcher.library_folders()
    assert folders == [TRAINING_DIR, GUI_DIR]
    assert launcher.in_slicer_application() is False
    assert getattr(launcher, "DeepRegAblationTraining", None) is None  # the Slicer module class needs Slicer


def test_training_launcher_runs_the_cli(capsys):
    launcher = load_training_launcher()
    assert launcher.main(["DeepRegAblationTraining.py", "--", "--help"]) == 0
    out = capsys.readouterr().out
    assert "deepreg-ablation" in out and "register" in out and "train" in out
    assert launcher.main(["DeepRegAblationTraining.py", "--", "no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_training_launcher_as_a_script_exits_with_the_cli_status():
    """``python DeepRegAblationTraining.py -- <args>`` (what Slicer --python-script runs, minus Slicer):
    the arguments after "--" reach the CLI and its status becomes the process exit status."""
    bad = subprocess.run([sys.executable, str(TRAINING_MODULE), "--", "register", "--no-such-option"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "usage: deepreg-ablation register" in bad.stderr  # the arguments reached the register command


# --------------------------------------------------------------------------- explicit imports (issue 13)
# Submodules of Slicer's own ``slicer`` package (Base/Python/slicer/ in Slicer 5.8 and main): ``import
# slicer`` does not import them in PythonSlicer (only the application's start-up imports slicer.util),
# while the slicer-core package used by these tests imports them all. Whoever uses one imports it.
SLICER_SUBMODULES = {"util", "ScriptedLoadableModule", "parameterNodeWrapper", "testing", "cli", "logic", "i18n",
                     "slicerqt"}
# Set only in the Slicer application (slicer/__init__.py's docstring), never in PythonSlicer, which
# runs the library code in the background process.
APPLICATION_ONLY = {"app", "mrmlScene", "modules", "moduleNames"}
NAMES_TO_IMPORT = ("slicer", "qt", "ctk", "vtk")


def imported_names(tree: ast.AST) -> Set[str]:
    """Dotted modules a file imports anywhere (``import a.b`` gives a and a.b; ``from a import b`` gives a.b too)."""
    names: Set[str] = set()

    def add(dotted: str) -> None:
        parts = dotted.split(".")
        names.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            add(node.module)
            for alias in node.names:
                add(f"{node.module}.{alias.name}")
    return names


def attribute_uses(tree: ast.AST, root: str) -> List[Tuple[int, str]]:
    return [(node.lineno, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == root]


def import_problems(path: Path) -> List[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = imported_names(tree)
    in_library = any(lib in path.parents for lib in LIB_DIRS)
    problems = []
    for root in NAMES_TO_IMPORT:
        uses = attribute_uses(tree, root)
        if uses and root not in imported:
            problems.append(f"{path.name}:{uses[0][0]} uses {root}.{uses[0][1]} but never imports {root}")
        if root != "slicer":
            continue
        for lineno, attr in uses:
            if attr in SLICER_SUBMODULES and f"slicer.{attr}" not in imported:
                problems.append(f"{path.name}:{lineno} uses slicer.{attr} without importing slicer.{attr}")
            if attr in APPLICATION_ONLY and in_library:
                problems.append(f"{path.name}:{lineno} uses slicer.{attr}, which PythonSlicer does not have")
    return problems


def test_import_check_catches_a_missing_submodule_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import slicer\nimport qt\n\ndef f(node):\n    return slicer.util.arrayFromVolume(node), ctk.ctkPathLineEdit\n")
    assert len(import_problems(bad)) == 2
    good = tmp_path / "good.py"
    good.write_text("import ctk\nfrom slicer.util import VTKObservationMixin\n\ndef f(node):\n"
                    "    import slicer\n    return slicer.util.arrayFromVolume(node), ctk.ctkPathLineEdit\n")
    assert import_problems(good) == []


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_module_imports_the_slicer_submodules_and_qt_names_it_uses(path):
    problems = import_problems(path)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- smaller defects of issue 13
def _function_strings(name: str) -> str:
    tree = ast.parse(gui_source())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return " ".join(n.value for n in ast.walk(function) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def test_pytorch_messages_name_the_pytorch_utils_module_and_a_way_out():
    """SlicerPyTorch's module title is "PyTorch Utils" (PyTorchUtils.py); its Install button only says
    "already installed" while any torch is installed, so a too-old torch must be uninstalled first."""
    text = _function_strings("ensurePyTorch")
    assert "'PyTorch Utils'" in text
    assert not re.search(r"PyTorch Util(?!s)", text)
    assert "Uninstall PyTorch" in text and "restart Slicer" in text


def test_checkpoint_path_browses_folders_for_compare_all_and_remembers_paths():
    """ctkPathLineEdit's browse button opens a file dialog whenever Files is among its filters
    (ctkPathLineEdit::browse), so Files|Dirs can never pick the folder that Compare all needs; its
    settingKey history is only written by addCurrentPathToHistory()."""
    widget = ui_widgets(read_ui())["checkpointPathLineEdit"]
    filters = next(p.findtext("set") for p in widget.findall("property") if p.get("name") == "filters")
    assert not ("Files" in filters and "Dirs" in filters), filters
    assert widget_string_property(widget, "settingKey")
    source = gui_source()
    assert "ctk.ctkPathLineEdit.Dirs" in source and "ctk.ctkPathLineEdit.Files" in source
    assert "checkpointPathLineEdit.addCurrentPathToHistory()" in source


def test_label_layer_is_chosen_by_the_scene_adapter():
    """setSliceViewerLayers(label="keep-current") left an earlier run's label map on screen; the choice is
    scene.result_label_layer's (tested in test_scene.py)."""
    tree = ast.parse(gui_source())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and decorator_name(n) == "setSliceViewerLayers"]
    assert calls
    for call in calls:
        label = next(k.value for k in call.keywords if k.arg == "label")
        assert isinstance(label, ast.Call) and decorator_name(label) == "result_label_layer", ast.unparse(label)


def test_extension_urls_point_at_files_in_the_repository():
    """The icon and screenshot URLs of the extension (raw files of the repository) exist here."""
    sets = cmake_sets(REPO / "CMakeLists.txt")
    raw = sets["DEEPREGABLATION_RAW"][0]
    urls = sets["EXTENSION_ICONURL"] + sets["EXTENSION_SCREENSHOTURLS"]
    for url in urls:
        assert url.startswith("${DEEPREGABLATION_RAW}/"), url
        assert (REPO / url[len("${DEEPREGABLATION_RAW}/"):]).is_file(), f"{url} ({raw}) names no file of the repository"


def _words(text: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


def _help_text(module_file: Path) -> str:
    """The string assigned to ``self.parent.helpText`` in a module file (parsed, not imported)."""
    for node in ast.walk(ast.parse(module_file.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
                and node.targets[0].attr == "helpText" and isinstance(node.value, ast.Constant)):
            return node.value.value
    raise AssertionError(f"no helpText string in {module_file}")


def test_the_help_and_the_readme_say_which_way_the_arrows_point():
    """The help text and the README say what an arrow shows in the words of ``outputs.arrows`` (the direction
    Slicer draws, issue 23), and no longer the opposite."""
    from DeepRegAblationLib.outputs.arrows import ARROW_DIRECTION_TEXT

    help_text = _words(_help_text(GUI_MODULE))
    readme = _words((REPO / "README.md").read_text(encoding="utf-8"))
    for text in (help_text, readme):
        assert ARROW_DIRECTION_TEXT in text
        assert "is taken from in the moving image" not in text


def _method(tree: ast.AST, class_name: str, name: str) -> ast.FunctionDef:
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node: ast.AST) -> List[str]:
    """Names of the functions / methods called in ``node``, in source order."""
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return [decorator_name(n) for n in calls]


def test_the_metrics_table_switches_the_shown_variant_and_one_glyph_field_is_shown():
    """Compare all (issue 23): a row chosen in the metrics table shows that variant (its glyphs only, the Display
    settings applied to it: ``scene.show_result``, tested in test_scene.py); the panel keeps every variant's nodes."""
    tree = ast.parse(gui_source())
    setup = ast.unparse(_method(tree, "DeepRegAblationWidget", "setup")).replace("'", "\"")
    assert 'resultsTableView.connect("selectionChanged()", self.onResultsTableSelectionChanged)' in setup
    handler = _method(tree, "DeepRegAblationWidget", "onResultsTableSelectionChanged")
    assert "_showVariant" in _calls(handler) and "selectedIndexes" in _calls(handler)
    assert "_showVariant" in _calls(_method(tree, "DeepRegAblationWidget", "_onRegistrationFinished"))
    assert "show_result" in _calls(_method(tree, "DeepRegAblationLogic", "showResults"))
    assert "apply_display_settings" not in _calls(_method(tree, "DeepRegAblationLogic", "showResults"))
    table = ui_widgets(read_ui())["resultsTableView"]
    properties = {p.get("name"): ET.tostring(p, encoding="unicode") for p in table.findall("property")}
    assert "SelectRows" in properties.get("selectionBehavior", "")
    assert "SingleSelection" in properties.get("selectionMode", "")


def test_apply_is_guarded_before_anything_processes_events():
    """A double click on Apply started two runs (issue 23): the button stayed enabled until the first
    ``processEvents`` (in ``_log``, in the PyTorch install). ``onApplyButton`` must check the guard and disable the
    button before it logs or checks PyTorch, and the logic's ``startRegistration`` must enter its guard before it
    logs anything (``panel.StartGuard``, tested in test_panel.py)."""
    tree = ast.parse(gui_source())
    apply = _method(tree, "DeepRegAblationWidget", "onApplyButton")
    first = ast.unparse(apply.body[1] if isinstance(apply.body[0], ast.Expr) else apply.body[0])
    assert first.startswith("if self._applyGuard.busy:") and "return" in first, first
    calls = _calls(apply)
    assert calls.index("starting") < min(calls.index(name) for name in ("_log", "ensurePyTorch", "_applyOrCancel")
                                         if name in calls)
    source = ast.unparse(apply)
    assert source.index("self.ui.applyButton.enabled = False") < source.index("_applyOrCancel")
    start = _method(tree, "DeepRegAblationLogic", "startRegistration")
    start_calls = [name for name in _calls(start) if name != "RuntimeError"]
    assert start_calls[:2] == ["isRunning", "starting"], start_calls


CONTRIBUTOR = re.compile(r"^[^(),]+ \([^()]+\)$")
"""``Firstname Lastname (Organization)``: the Extensions Index's form of a contributor (Slicer docs, extensions.md)."""


def test_license_file_and_named_contributors_for_the_extensions_index():
    """The Extensions Index asks for LICENSE.txt in the repository root and its name on the homepage (the README),
    and for contributors as ``Name (Affiliation)`` in the extension's CMake metadata and the modules (issue 23)."""
    license_text = (REPO / "LICENSE.txt").read_text(encoding="utf-8")
    assert license_text.startswith("BSD 3-Clause License")
    assert re.search(r"Copyright \(c\) 20\d\d, DeepRegAblation contributors", license_text)
    for clause in ("Redistributions of source code must retain", "Redistributions in binary form must reproduce",
                   "Neither the name of the copyright holder nor the names of its", 'PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"'):
        assert clause in license_text, clause
    assert 'license = { text = "BSD-3-Clause" }' in (REPO / "pyproject.toml").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## License" in readme and "BSD 3-Clause" in readme and "LICENSE.txt" in readme

    sets = {args[0]: args[1:] for name, args in cmake_commands((REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
            if name == "set" and args}
    contributors = [c.strip() for c in " ".join(sets["EXTENSION_CONTRIBUTORS"]).split(",")]
    assert contributors and all(CONTRIBUTOR.match(c) for c in contributors), contributors
    for module in (GUI_MODULE, TRAINING_MODULE):
        listed = [n for n in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
                  if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Attribute)
                  and n.targets[0].attr == "contributors"]
        assert listed, module
        names = [element.value for element in listed[0].value.elts]
        assert names == contributors, (module.name, names)


def test_the_help_says_what_the_models_were_trained_on_and_what_to_expect_on_pathology():
    """The README's quick start registers two tumour brains (MRBrainTumor1/2): the help and the README say the
    models were trained on T1 brains without lesions and what to expect on pathology (issue 23)."""
    help_text = _words(_help_text(GUI_MODULE)).lower()
    quick_start = _words((REPO / "README.md").read_text(encoding="utf-8").split("## Quick start in the panel")[1]
                         .split("### Reading the outputs")[0]).lower()
    for text in (help_text, quick_start):
        assert "trained on" in text and "t1" in text and "healthy" in text
        assert "tumour" in text and "pathology" in text and "jacobian" in text


def _run_test_calls(module_file: Path, class_name: str) -> Dict[str, str]:
    """The test methods that ``runTest`` of a self-test class calls: name -> their source."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    called = [name for name in _calls(methods["runTest"]) if name.startswith("test_")]
    return {name: ast.unparse(methods[name]) for name in called}


def test_the_self_tests_cover_apply_cancel_compare_all_and_the_launchers_exit_status():
    """What a Slicer developer runs first (issue 23): the GUI self-test clicks Apply (a double click starts one
    run), Cancel and Compare all (one glyph field shown, a table row switches it); the training self-test runs the
    headless launcher in its own process and checks its exit status."""
    gui = _run_test_calls(GUI_MODULE, "DeepRegAblationTest")
    gui_source = "\n".join(gui.values())
    assert "onApplyButton" in gui_source
    assert any("compare_all" in name for name in gui), list(gui)
    compare = next(source for name, source in gui.items() if "compare_all" in name)
    assert "selectRow" in compare and "GetVisibility" in compare and "GetNumberOfRows" in compare
    apply = next(source for name, source in gui.items() if "apply" in name and "cancel" in name)
    assert apply.count("onApplyButton") >= 3 and "Cancelled" in apply and "isRunning" in apply
    training = _run_test_calls(TRAINING_MODULE, "DeepRegAblationTrainingTest")
    launcher = next(source for name, source in training.items() if "launcher" in name and "exit" in name)
    assert "subprocess" in launcher and "returncode" in launcher and "train" in launcher
