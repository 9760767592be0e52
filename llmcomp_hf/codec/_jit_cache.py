"""Keep numba's on-disk cache consistent across the codec's modules.

numba invalidates a cached kernel only when its own source file changes, not when a kernel it
inlines from another module does. Before the first kernel runs, we hash every kernel source file
and drop all cached kernels of this package when the hash differs from the one recorded.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_STAMP = _HERE / "__pycache__" / "llmcomp_kernels.sha256"
_checked = False
log = logging.getLogger(__name__)


def ensure_consistent() -> None:
    """Drop stale cached kernels once per process (cheap: hashes a few small files)."""
    global _checked
    if _checked:
        return
    _checked = True
    digest = hashlib.sha256()
    for src in sorted(_HERE.glob("*.py")):
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    want = digest.hexdigest()
    try:
        if _STAMP.exists() and _STAMP.read_text() == want:
            return
        for stale in list(_STAMP.parent.glob("*.nbi")) + list(_STAMP.parent.glob("*.nbc")):
            stale.unlink(missing_ok=True)
        _STAMP.parent.mkdir(exist_ok=True)
        _STAMP.write_text(want)
    except OSError as exc:  # read-only install: numba falls back to its own cache locator
        log.debug("could not refresh the numba kernel cache stamp: %s", exc)
