"""What a registration writes besides ``result.npz``: files (``exports``: NIfTI images, ITK transforms,
the metrics table) and PNG snapshots (``snapshots``: off-screen VTK renders). Import the submodules."""

__all__ = ["exports", "snapshots"]
