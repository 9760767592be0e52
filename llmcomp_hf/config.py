"""``CompressionConfig``: the ``quantization_config`` that makes transformers compress weights with llmcomp.

It is stored in ``config.json`` under ``quantization_config`` (``quant_method: "llmcomp"``) and
round-trips through ``to_dict``/``from_dict``. Every field is validated; a bad value raises
``ValueError`` naming the field and the fix.

``stages`` lists lossy transforms (``Transform.to_dict()`` form: quantize, low rank, prune) applied to
each selected weight before the entropy coder (docs/format.md part 3). Empty ``stages`` is bit-exact
compression; ``LosslessConfig`` is that preset and refuses stages. Named presets live in ``configs/``.

``calibration`` names a file written by ``llmcomp_hf.calibrate`` (``llmcomp calibrate``): the stages
then take its per-input-channel importance and per-tensor step allocation (``calibration_use``),
and the config records the file's SHA-256 and number of texts (``calibration_info``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from llmcomp_hf._conflict import conflict_error
from llmcomp_hf._hf_compat import quantization_config_being_merged
from llmcomp_hf.coders import CHECKPOINT_CODERS
from llmcomp_hf.codec.encoded import DTYPES, MAX_BLOCK, MIN_BLOCK
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.shard import SHARD_VERSION

QUANT_METHOD = "llmcomp"
CODERS = CHECKPOINT_CODERS  # from the coder registry (llmcomp_hf.coders)
DEFAULT_DTYPES = ("bfloat16", "float16", "float32")
LOSSY_DTYPES = DEFAULT_DTYPES  # float weights the transforms accept
DEFAULT_MODULE_TYPES = ("Linear", "Embedding", "Conv1D")
#: stage options that need calibration data: a stage never holds them, the config's ``calibration`` file does
CALIBRATION_KEYS = ("importance", "calibration", "act", "allocate", "allocate_steps", "sensitivity")
FIELDS = (
    "coder",
    "block_size",
    "min_numel",
    "dtypes",
    "module_types",
    "modules_to_not_convert",
    "stages",
    "format_version",
)
CALIBRATION_FIELDS = ("calibration", "calibration_use", "calibration_info")  # in to_dict only when set


class CompressionConfig(QuantizationConfigMixin):
    """llmcomp compression: optional lossy ``stages``, then entropy coding (docs/format.md).

    Args:
        coder: ``"huffman"`` (fastest decode, default), ``"rans"`` (slightly smaller), ``"rans-ctx"``
            (smaller, ~20% slower decode: no CUDA decoder) or ``"rans-scale"`` (smallest: exponent
            modelled per row and column scale, format version 4, slower decode, no CUDA decoder); see
            ``llmcomp_hf.coders``.
        block_size: elements per independently decodable block: a multiple of 64 in [256, 2**24].
        min_numel: tensors with fewer elements stay uncompressed (headers would outweigh the gain).
        dtypes: dtype names whose weights are compressed (``"bfloat16"``, ``"float16"``, ``"float32"``...).
        module_types: class names of the modules whose ``weight`` is compressed; a module matches when
            any class in its MRO has one of these names (``nn.Linear`` subclasses count as ``Linear``).
        modules_to_not_convert: module names to leave uncompressed; an entry matches a module path
            (``"lm_head"``, ``"model.layers.0"``) or any run of its dot-separated segments (``"q_proj"``).
        stages: lossy transforms applied in the order prune -> lowrank -> quantize, as
            ``Transform.to_dict()`` dicts (or Transform objects); empty for bit-exact compression.
            Calibration-dependent options in a stage are refused: they come from ``calibration``.
        calibration: path of a calibration file (``llmcomp_hf.calibrate``); must exist when the config is
            made, unless ``calibration_info`` already records it (a config read back from config.json).
        calibration_use: how the stages use it: ``{"importance": true, "allocate": true, "max_step": 1.0}``
            (the default): per-column ECQ steps from the importance, per-tensor steps allocated around the
            ECQ stage's ``step`` (their size-weighted geometric mean) from the sensitivities, capped at
            ``max_step``; ``"gptq": true`` also rounds with error feedback (needs a file calibrated with
            ``hessian=True``). Setting it without ``calibration`` raises ValueError (a calibrated preset).
        calibration_info: filled in from the file (name, SHA-256, texts, tokens, source model).
        format_version: llmcomp checkpoint format version; written by llmcomp-hf, checked on load.
    """

    def __init__(
        self,
        coder: str = "huffman",
        block_size: int = 1 << 16,
        min_numel: int = 4096,
        dtypes: Iterable[str] = DEFAULT_DTYPES,
        module_types: Iterable[str] = DEFAULT_MODULE_TYPES,
        modules_to_not_convert: Iterable[str] | None = None,
        stages: Iterable[Any] | None = None,
        format_version: int = SHARD_VERSION,
        calibration: str | os.PathLike | None = None,
        calibration_use: dict[str, Any] | None = None,
        calibration_info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        method = kwargs.pop("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"{name}.quant_method must be {QUANT_METHOD!r}, got {method!r}")
        if kwargs:
            raise ValueError(
                f"{name} got unknown fields {sorted(kwargs)}; known: {list(FIELDS + CALIBRATION_FIELDS)}. If this config.json "
                "was written by a newer llmcomp-hf, upgrade it (pip install -U llmcomp-hf)."
            )
        self.quant_method = QUANT_METHOD
        self.coder = coder
        self.block_size = block_size
        self.min_numel = min_numel
        self.dtypes = _str_list(name, "dtypes", dtypes)
        self.module_types = _str_list(name, "module_types", module_types)
        self.modules_to_not_convert = _str_list(name, "modules_to_not_convert", modules_to_not_convert or [])
        self.stages = _normalise_stages(name, stages)
        self.format_version = format_version
        self.calibration = os.fspath(calibration) if calibration is not None else None
        self.calibration_use = dict(calibration_use) if calibration_use is not None else None
        self.calibration_info = dict(calibration_info) if calibration_info is not None else None
        self.post_init()

    def post_init(self) -> None:
        """Validate every field; raise ValueError (FormatError for a newer format) naming the field."""
        name = type(self).__name__
        if self.coder not in CODERS:
            raise ValueError(f"{name}.coder must be one of {list(CODERS)}, got {self.coder!r}")
        bs = self.block_size
        if not _is_int(bs) or not (MIN_BLOCK <= bs <= MAX_BLOCK) or bs % 64:
            raise ValueError(
                f"{name}.block_size must be a multiple of 64 in [{MIN_BLOCK}, {MAX_BLOCK}], got {bs!r}; "
                "the default 65536 suits most models"
            )
        if not _is_int(self.min_numel) or self.min_numel < 0:
            raise ValueError(f"{name}.min_numel must be an int >= 0, got {self.min_numel!r}")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or not self.dtypes:
            raise ValueError(f"{name}.dtypes must be a non-empty list of {sorted(DTYPES)}, got {self.dtypes!r}")
        if self.stages:
            lossy = [d for d in self.dtypes if d not in LOSSY_DTYPES]
            if lossy:
                raise ValueError(
                    f"{name}.dtypes {lossy} cannot take lossy stages (only {list(LOSSY_DTYPES)}); drop them from "
                    "dtypes or use stages=[] for bit-exact compression"
                )
        if not self.module_types:
            raise ValueError(f"{name}.module_types must name at least one module class, e.g. ['Linear']")
        fv = self.format_version
        if not _is_int(fv) or fv < 1:
            raise ValueError(f"{name}.format_version must be an int >= 1, got {fv!r}")
        if fv > SHARD_VERSION:
            raise FormatError(
                f"this checkpoint uses llmcomp format version {fv}, but this llmcomp-hf reads up to version "
                f"{SHARD_VERSION}: upgrade llmcomp-hf (pip install -U llmcomp-hf)"
            )
        self._check_calibration(name)

    def _check_calibration(self, name: str) -> None:
        from llmcomp_hf.calibration import FIX, check_use, file_info

        if self.calibration is None:
            if self.calibration_use is not None or self.calibration_info is not None:
                raise ValueError(
                    f"{name} uses calibration (calibration_use) but has no calibration file: {FIX}, then pass "
                    "calibration='calib.safetensors' (CLI: --calibration calib.safetensors)"
                )
            return
        if not isinstance(self.calibration, str) or not self.calibration:
            raise ValueError(f"{name}.calibration must be a file path, got {self.calibration!r}")
        if not self.stages:
            raise ValueError(f"{name}.calibration applies to lossy stages, and stages is empty; drop calibration "
                             "or add stages (e.g. the ecq-calibrated preset)")
        self.calibration_use = check_use(name, self.calibration_use or {}, self.stages)
        if self.calibration_info is None:  # a new config: the file must be there (read back ones may not have it)
            self.calibration_info = file_info(self.calibration)

    @property
    def is_lossless(self) -> bool:
        """True when no lossy stage is configured: decoding gives back every weight bit for bit."""
        return not self.stages

    def pipeline(self) -> Any:
        """The ``transforms.Pipeline`` of ``stages`` (None when lossless)."""
        if not self.stages:
            return None
        from llmcomp_hf.transforms import Pipeline, config_from_dict

        return Pipeline(stages=tuple(config_from_dict(s) for s in self.stages))

    def calibrated_plan(self, names: Iterable[str]) -> Any:
        """``calibration.CalibratedPlan`` of the weights ``names`` the stages apply to (None without calibration).

        Raises ValueError naming the calibration file and the fix when it is missing or does not match.
        """
        if self.calibration is None:
            return None
        from llmcomp_hf.calibration import CalibratedPlan

        return CalibratedPlan(self, names)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """Build from ``to_dict`` output; on ``CompressionConfig`` empty stages give a ``LosslessConfig``."""
        target = LosslessConfig if cls is CompressionConfig and not config_dict.get("stages") else cls
        try:
            config = target(**config_dict)
        except FormatError:
            raise
        except (ValueError, TypeError) as exc:  # also what transformers reads from a checkpoint's config.json
            raise FormatError(f"invalid llmcomp quantization_config: {exc}. If it comes from a checkpoint's "
                              "config.json, that file is damaged: restore it or re-compress the model.") from exc
        error = conflict_error(config, quantization_config_being_merged())
        if error is not None:  # from_pretrained(llmcomp checkpoint, quantization_config=<another class>)
            raise error
        unused = {}
        for key, value in kwargs.items():  # transformers' convention: known attributes are overridden
            if hasattr(config, key):
                setattr(config, key, value)
            else:
                unused[key] = value
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> CompressionConfig:
        """Read a YAML file of config fields (top level, or under ``quantization_config``); ``overrides`` win."""
        from llmcomp_hf.presets import read_yaml

        return cls.from_dict({**read_yaml(path), **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CompressionConfig:
        """A named preset from ``configs/<name>.yaml`` (``lossless``, ``int8``, ``ecq4``, ``nf4``, ...)."""
        from llmcomp_hf.presets import preset_path

        return cls.from_yaml(preset_path(name), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields, as written to ``config.json``."""
        out = {"quant_method": self.quant_method}
        out.update({name: _copy(getattr(self, name)) for name in FIELDS})
        out.update({n: _copy(getattr(self, n)) for n in CALIBRATION_FIELDS if getattr(self, n, None) is not None})
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressionConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, like every transformers config


class LosslessConfig(CompressionConfig):
    """Bit-exact entropy coding of float weights: a ``CompressionConfig`` whose ``stages`` must stay empty."""

    def post_init(self) -> None:
        if self.stages:
            raise ValueError(
                f"LosslessConfig.stages must be empty (lossless compression), got {self.stages!r}; for lossy "
                "stages use CompressionConfig(stages=...) or CompressionConfig.from_preset(...)"
            )
        super().post_init()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(owner: str, field: str, values: Iterable[str] | str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{owner}.{field} must be a list of strings, got the string {values!r}; wrap it: [{values!r}]")
    out = list(values)
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{owner}.{field} must be a list of non-empty strings, got {out!r}")
    return out


def _normalise_stages(owner: str, stages: Iterable[Any] | None) -> list[dict[str, Any]]:
    """Stages as canonical ``Transform.to_dict()`` dicts, checked one by one and as a pipeline."""
    if stages is None:
        return []
    if isinstance(stages, (str, dict)) or not isinstance(stages, Iterable):
        raise ValueError(f"{owner}.stages must be a list of transform configs, got {stages!r}; wrap it in a list")
    stages = list(stages)
    if not stages:
        return []
    from llmcomp_hf.transforms import Pipeline, Transform, config_from_dict

    configs = []
    for i, stage in enumerate(stages):
        if isinstance(stage, Transform):
            stage = stage.to_dict()
        if not isinstance(stage, dict):
            raise ValueError(f"{owner}.stages[{i}] must be a transform config dict, got {stage!r}")
        calib = sorted(k for k in stage if k in CALIBRATION_KEYS)
        if calib:
            raise ValueError(
                f"{owner}.stages[{i}] has calibration-dependent option(s) {calib}: a stage holds no calibration "
                "data; drop them and pass calibration='calib.safetensors' (from `llmcomp calibrate`) instead"
            )
        try:
            configs.append(config_from_dict(stage))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{owner}.stages[{i}]: {exc}") from exc
    try:
        Pipeline(stages=tuple(configs))
    except ValueError as exc:
        raise ValueError(f"{owner}.stages: {exc}") from exc
    return [c.to_dict() for c in configs]


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value
