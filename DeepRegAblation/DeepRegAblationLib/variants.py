"""Old path of ``models.variants``, kept for one release (the integration of the re-layout removes this shim).

The old name is the same module object as the new one, so attributes set on either (e.g. by
``monkeypatch``) are seen by both.
"""
import sys

from .models import variants as _module

sys.modules[__name__] = _module
