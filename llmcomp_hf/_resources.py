"""Where the presets (``configs/``) and card templates (``model_cards/``) live.

They sit at the top of the source tree; a wheel installs copies under ``<prefix>/share/llmcomp-hf/``
(``[tool.setuptools.data-files]`` in pyproject.toml). The source tree wins when both exist.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def resource_dir(name: str) -> Path:
    """The folder ``name`` (``"configs"`` or ``"model_cards"``): source tree, else installed data."""
    source = Path(__file__).resolve().parents[1] / name
    if source.is_dir():
        return source
    for prefix in (sysconfig.get_path("data"), sys.prefix):
        installed = Path(prefix) / "share" / "llmcomp-hf" / name
        if installed.is_dir():
            return installed
    return source  # missing: callers report the path they looked in
