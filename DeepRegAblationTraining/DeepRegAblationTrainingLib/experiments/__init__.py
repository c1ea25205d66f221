"""The experiments: runs trained, evaluated and reported under identical conditions.

- :mod:`.runs`: what the runs of one experiment share (setup, training, evaluation, report text);
- :mod:`.ablation`: the four-variant ablation (and its tuned regularisation arm);
- :mod:`.sweep`: the regulariser sweeps (λ grid, multiplier M);
- :mod:`.checkpoint_evaluation`: trained checkpoints on fixed validation pairs (``evaluate``);
- :mod:`.demo`: the main job, the MNI152 template against a known deformation.

Nothing is imported here: the commands' ``--help`` must work without PyTorch.
"""
from __future__ import annotations

__all__: list = []
