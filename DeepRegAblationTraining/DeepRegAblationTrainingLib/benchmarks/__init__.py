"""The benchmarks of the ``bench`` command and the reliability table.

- :mod:`.speed`: speed and peak memory of the variants beside voxelmorph's ``VxmPairwise`` (each case in
  its own process: ``python -m DeepRegAblationTrainingLib.benchmarks.speed CASE_JSON``);
- :mod:`.classical`: classical registration (SimpleITK, ANTs) and the peers (elastix, FireANTs);
- :mod:`.quality`: the registration-quality benchmark (``quality_table``) on real pairs;
- :mod:`.suite`: the parts of ``bench`` (speed cases, the quality sections) and its report;
- :mod:`.reliability`: corrupt inputs against every entry point that reads images.

Nothing is imported here: ``bench --help`` must work without PyTorch (the modules import it where used).
"""
from __future__ import annotations

__all__: list = []
