"""Scene files: save a scene with its data files, write the results of a registration as a complete scene that
opens in Slicer, and read one back.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from ..imageio import ImageData
from .display import add_default_label_colors, show_in_slice_views
from .nodes import add_volume_node
from .results import add_registration_to_scene, update_metrics_table

if TYPE_CHECKING:  # pragma: no cover
    from ..registration.result import RegistrationResult

__all__ = ["SCENE_FILE_NAME", "save_scene", "write_results_scene", "load_results_scene"]

PathLike = Union[str, Path]

SCENE_FILE_NAME = "DeepRegAblation-results.mrml"

_DEFAULT_EXTENSIONS = {
    "vtkMRMLVolumeNode": "nrrd",
    "vtkMRMLTransformNode": "h5",
    "vtkMRMLTableNode": "tsv",
}


def _safe_file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "node"


def save_scene(scene, mrml_path: PathLike) -> Path:
    """Write every storable node's data next to ``mrml_path`` and the scene file itself.

    Volumes go to ``.nrrd`` (compressed), transforms to ``.h5``, tables to ``.tsv``, colour
    nodes to their default format. File names come from node names (made unique). Returns
    the ``.mrml`` path.
    """
    mrml_path = Path(mrml_path).resolve()
    out_dir = mrml_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    used = set()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if not node.GetSaveWithScene():
            continue
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        storage = node.GetStorageNode()
        extension = next((ext for cls, ext in _DEFAULT_EXTENSIONS.items() if node.IsA(cls)), None)
        extension = extension or storage.GetDefaultWriteFileExtension()
        stem = _safe_file_stem(node.GetName() or node.GetID())
        file_name = f"{stem}.{extension}"
        counter = 1
        while file_name.lower() in used:
            counter += 1
            file_name = f"{stem}_{counter}.{extension}"
        used.add(file_name.lower())
        if storage.IsA("vtkMRMLVolumeArchetypeStorageNode"):
            storage.SetUseCompression(1)
        storage.SetFileName(str(out_dir / file_name))
        if not storage.WriteData(node):
            raise ValueError(
                f"could not write node {node.GetName()!r} ({node.GetClassName()}) to {out_dir / file_name}"
            )
    scene.SetRootDirectory(str(out_dir))
    scene.SetURL(str(mrml_path))
    if not scene.Commit(str(mrml_path)):
        raise ValueError(f"could not write the scene file {mrml_path}")
    return mrml_path


def write_results_scene(out_dir: PathLike, fixed: ImageData, moving: ImageData,
                        results: Sequence["RegistrationResult"]) -> Path:
    """Build a new scene with ``fixed``, ``moving``, every result and the metrics table; save it.

    Writes ``out_dir/DeepRegAblation-results.mrml`` and its data files (NRRD volumes, HDF5
    transforms, TSV table, colour tables). The fixed volume is the background and the first
    warped volume the foreground (50 %) of the Red, Yellow and Green slice views; the first
    result's warped labels, if any, are the label layer. Returns the ``.mrml`` path.
    """
    import slicer

    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, ImageData):
            raise ValueError(f"{name} must be an ImageData, got {type(image).__name__}")
    results = list(results)
    if not results:
        raise ValueError("results is empty: nothing to write")
    for index, result in enumerate(results):
        if np.shape(result.warped) != np.shape(fixed.array):
            raise ValueError(
                f"results[{index}].warped shape {np.shape(result.warped)} differs from fixed {np.shape(fixed.array)}"
            )
    scene = slicer.vtkMRMLScene()
    add_default_label_colors(scene)  # what Slicer's own scenes have; label maps refer to it
    # reuse=False: distinct nodes even when both images carry the same name
    fixed_node = add_volume_node(scene, fixed, fixed.name or "fixed", reuse=False)
    moving_node = add_volume_node(scene, moving, moving.name or "moving", reuse=False)
    added = [add_registration_to_scene(scene, result, fixed_node, moving_node, reuse=True) for result in results]
    update_metrics_table(scene, results)
    show_in_slice_views(scene, background=fixed_node, foreground=added[0]["warped"],
                        label=added[0].get("warped_labels"), create_missing=True)
    return save_scene(scene, Path(out_dir) / SCENE_FILE_NAME)


def load_results_scene(mrml_path: PathLike):
    """Read a ``.mrml`` scene and its data files into a new ``vtkMRMLScene`` and return it."""
    import slicer

    mrml_path = Path(mrml_path)
    if not mrml_path.is_file():
        raise FileNotFoundError(f"scene file not found: {mrml_path}")
    scene = slicer.vtkMRMLScene()
    add_default_label_colors(scene)  # label maps in the file refer to it, as in Slicer
    scene.SetURL(str(mrml_path.resolve()))
    scene.SetRootDirectory(str(mrml_path.resolve().parent))
    if not scene.Import():
        raise ValueError(f"could not read the scene file {mrml_path}")
    return scene
