"""Named configuration presets (``configs/*.yaml``) and YAML config files for ``CompressionConfig``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmcomp_hf._resources import resource_dir

#: folder of the shipped presets (one ``<name>.yaml`` per preset)
PRESET_DIR = resource_dir("configs")


def preset_names() -> list[str]:
    """Names of the available presets (file stems in :data:`PRESET_DIR`)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []


def preset_path(name: str) -> Path:
    """Path of preset ``name``; ValueError naming the known presets when it does not exist."""
    path = PRESET_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not name or "/" in name or not path.is_file():
        raise ValueError(
            f"unknown llmcomp preset {name!r}; known: {preset_names()} (in {os.fspath(PRESET_DIR)}). "
            "For your own file use CompressionConfig.from_yaml(path)."
        )
    return path


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The config fields of a YAML file: its top-level mapping, or the one under ``quantization_config``."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {os.fspath(path)!r} is not valid YAML: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("quantization_config"), dict):
        data = data["quantization_config"]
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {os.fspath(path)!r} must hold a mapping of CompressionConfig fields (coder, stages, ...), "
            f"got {type(data).__name__}"
        )
    return dict(data)


__all__ = ["PRESET_DIR", "preset_names", "preset_path", "read_yaml"]
