"""A copy of a checkpoint whose network runs its stages more (or fewer) times at inference: DEFORM U-Net passes (a
cascade) and AFFINE affine-stage passes. The passes share the weights, so a file trained with one number of passes runs
with another unchanged. Issue 21's what-was-tried table (docs/results/distill-3d).

usage: .venv/bin/python scripts/brains3d/with_passes.py SOURCE.pt DESTINATION.pt DEFORM [AFFINE]
"""
import sys

from DeepRegAblationLib.models.checkpoints import RESERVED_KEYS, load_checkpoint, load_model_state, save_checkpoint
from DeepRegAblationLib.models.network import model_from_config


def main(source: str, destination: str, deform_passes: int, affine_passes: int = 0) -> None:
    ckpt = load_checkpoint(source)
    config = dict(ckpt["model_config"])
    passes = {"deform_passes": deform_passes}
    if affine_passes:
        passes["affine_passes"] = affine_passes
    config["arch"] = dict(config["arch"], **passes)
    model = model_from_config(config)
    load_model_state(model, ckpt, source=source)
    extra = {k: v for k, v in ckpt.items() if k not in RESERVED_KEYS}
    extra["shipped_from"] = dict(path=source, **passes)
    save_checkpoint(destination, model, **extra)
    print(f"{destination}: {source} with {passes}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:3], *(int(n) for n in sys.argv[3:]))
