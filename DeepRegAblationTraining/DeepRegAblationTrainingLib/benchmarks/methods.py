"""The method ids of the quality benchmark, their row labels and packages (no torch: read by ``bench --help``).

The methods themselves are in :mod:`.classical`; the report's one-sentence descriptions in
``reports.quality.METHOD_NOTES``.
"""
from __future__ import annotations

__all__ = ["CLASSICAL_CHOICES", "CLASSICAL_METHODS", "PEER_METHODS", "PEER_PACKAGES"]

CLASSICAL_CHOICES = ("auto", "ants", "sitk", "all", "syn", "affine")
"""``--classical``: ``auto`` = ANTs when ``antspyx`` is importable, else SimpleITK; ``all`` = both;
``syn`` = ANTs SyN alone (no affine-only row)."""
CLASSICAL_METHODS = {
    "identity": "identity (no registration)",
    "sitk_affine": "SimpleITK affine (Mattes MI)",
    "sitk_demons": "SimpleITK affine + diffeomorphic demons",
    "ants_affine": "ANTs affine (antspyx)",
    "ants_syn": "ANTs SyN (antspyx)",
}
"""Classical method id -> row label."""
PEER_METHODS = {
    "elastix": "elastix affine + B-spline (itk-elastix)",
    "fireants": "FireANTs affine + greedy (fireants)",
}
"""Optional peers (row id -> label); each runs only when its package imports (:func:`.classical.peer_status`)."""
PEER_PACKAGES = {"elastix": ("itk", "itk-elastix"), "fireants": ("fireants", "fireants")}
