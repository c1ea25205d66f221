"""DeepRegAblationLib: the Slicer-free registration core shared by both DeepRegAblation modules.

See docs/architecture.md for the modules, their shapes and units.
"""
__version__ = "0.1.0"
