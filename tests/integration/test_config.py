"""LosslessConfig: validation, JSON round trip, registration and the supported transformers range."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmcomp_hf._hf_compat import SUPPORTED_TRANSFORMERS, check_transformers_version
from llmcomp_hf._register import register
from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.errors import FormatError, LlmcompError
from tests.integration import helpers  # noqa: F401  (registers the quantizer)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_round_trip_through_json():
    cfg = LosslessConfig()
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["quant_method"] == "llmcomp" and d["format_version"] == 1 and d["stages"] == []
    assert LosslessConfig.from_dict(d) == cfg


def test_custom_values_round_trip():
    cfg = LosslessConfig(coder="rans", block_size=4096, min_numel=0, dtypes=["bfloat16"],
                         module_types=["Linear"], modules_to_not_convert=["lm_head", "layers.0"])
    again = LosslessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.modules_to_not_convert == ["lm_head", "layers.0"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"coder": "zstd"}, "coder"),
        ({"block_size": 100}, "block_size"),
        ({"block_size": 1 << 25}, "block_size"),
        ({"block_size": True}, "block_size"),
        ({"min_numel": -1}, "min_numel"),
        ({"dtypes": ["float128"]}, "dtypes"),
        ({"dtypes": []}, "dtypes"),
        ({"dtypes": "bfloat16"}, "dtypes"),
        ({"module_types": []}, "module_types"),
        ({"modules_to_not_convert": [""]}, "modules_to_not_convert"),
        ({"stages": [{"quantize": "int4"}]}, "stages"),
        ({"format_version": 0}, "format_version"),
        ({"quant_method": "bitsandbytes"}, "quant_method"),
        ({"threads": 4}, "unknown fields"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        LosslessConfig(**kwargs)


def test_newer_format_version_asks_for_an_upgrade():
    d = LosslessConfig().to_dict() | {"format_version": 2}
    with pytest.raises(FormatError, match="pip install -U llmcomp-hf"):
        LosslessConfig.from_dict(d)


def test_registered_and_dispatched_by_transformers():
    from transformers.quantizers.auto import AutoHfQuantizer, AutoQuantizationConfig

    from llmcomp_hf.quantizer import LlmcompHfQuantizer

    register()  # a second registration is a no-op, not transformers' "already registered" error
    cfg = AutoQuantizationConfig.from_dict(LosslessConfig(coder="rans").to_dict())
    assert isinstance(cfg, LosslessConfig) and cfg.coder == "rans"
    assert isinstance(AutoHfQuantizer.from_config(cfg, pre_quantized=True), LlmcompHfQuantizer)


@pytest.mark.parametrize("version, ok", [("5.21.0", True), ("5.24.0", True), ("5.99.1", True), ("5.20.0", False),
                                         ("5.19.3", False), ("6.0.0", False), ("6.0.0.dev0", False),
                                         ("5.9.0", False), ("4.57.1", False)])
def test_transformers_version_range(version, ok):
    if ok:
        check_transformers_version(version)
    else:
        with pytest.raises(LlmcompError, match=re.escape(SUPPORTED_TRANSFORMERS)):
            check_transformers_version(version)


def test_installed_transformers_is_supported_and_pyproject_agrees():
    check_transformers_version()
    assert f'"transformers{SUPPORTED_TRANSFORMERS}"' in (ROOT / "pyproject.toml").read_text()
