"""The stateless transform contract shared by every lossy stage.

A transform is a frozen, validated, JSON-serialisable config dataclass with two methods:

* ``apply(weight) -> Transformed``: the named standard tensors to store (integer codes, scales,
  codebooks, factors), a small JSON-serialisable ``meta`` dict, and the measured weight-space error;
* ``reconstruct(tensors, meta) -> torch.Tensor``: dequantize / recompose from what was stored.

``meta`` holds the transform's own config, so the module-level :func:`reconstruct` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}

_REGISTRY: dict[str, type[Transform]] = {}

#: what ``Transform._apply`` returns: (stored tensors, extra meta, bit-packed width per tensor)
Encoded = tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, int]]


def register(cls: type[Transform]) -> type[Transform]:
    """Class decorator: make a transform known to :func:`config_from_dict` under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"transform name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def known_transforms() -> list[str]:
    """Names of every registered transform."""
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class WeightError:
    """Weight-space error of a reconstruction (computed in float64)."""

    rel_mse: float  # ||w - w_hat||^2 / ||w||^2
    max_abs: float  # max |w - w_hat|
    sq_err: float  # ||w - w_hat||^2, so errors of several tensors can be summed
    sq_norm: float  # ||w||^2

    @property
    def rel_fro(self) -> float:
        """Relative Frobenius error ||w - w_hat|| / ||w||."""
        return math.sqrt(self.rel_mse)

    @property
    def snr_db(self) -> float:
        return math.inf if self.rel_mse == 0 else -10.0 * math.log10(self.rel_mse)

    @staticmethod
    def measure(weight: torch.Tensor, approx: torch.Tensor) -> WeightError:
        w = weight.detach().to(torch.float64).reshape(-1)
        d = w - approx.detach().to(torch.float64).reshape(-1)
        sq_err, sq_norm = float(d.square().sum()), float(w.square().sum())
        rel = sq_err / sq_norm if sq_norm > 0 else (0.0 if sq_err == 0 else math.inf)
        return WeightError(rel, float(d.abs().max()) if d.numel() else 0.0, sq_err, sq_norm)


@dataclass
class Transformed:
    """Output of :meth:`Transform.apply`.

    ``tensors``: what gets stored (later entropy-coded). ``meta``: small JSON-serialisable dict that
    :func:`reconstruct` needs besides the tensors. ``error``: measured against the input weight.
    ``packed_bits``: bits per element each tensor would need if bit-packed (codes of a 4-bit grid: 4),
    so :attr:`packed_bits_per_weight` is the nominal rate before entropy coding.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    error: WeightError | None = None
    packed_bits: dict[str, int] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        """Number of weights of the original tensor."""
        return math.prod(self.meta["shape"])

    @property
    def stored_bits(self) -> int:
        """Bits of all stored tensors as they are (uint8 codes count 8 bits), before entropy coding."""
        return sum(t.numel() * t.element_size() * 8 for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        return self.stored_bits / max(self.numel, 1)

    @property
    def packed_bits_per_weight(self) -> float:
        """Nominal rate: codes at their grid's bit width, side info at its dtype width."""
        bits = sum(t.numel() * self.packed_bits.get(k, t.element_size() * 8) for k, t in self.tensors.items())
        return bits / max(self.numel, 1)

    @property
    def lossless(self) -> bool:
        """True only when the reconstruction was measured to equal the input exactly."""
        return self.error is not None and self.error.sq_err == 0.0 and self.error.max_abs == 0.0

    def reconstruct(self) -> torch.Tensor:
        return reconstruct(self.tensors, self.meta)


@dataclass(frozen=True)
class Transform:
    """Base of every transform config. Subclasses set ``name`` and implement ``_apply``/``reconstruct``."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    #: dtype ``_apply`` receives the weight in; None keeps the input dtype (pruning stores it as is)
    compute_dtype: ClassVar[torch.dtype | None] = torch.float32
    #: whether ``apply`` accepts a per-input-channel ``importance``
    uses_importance: ClassVar[bool] = False
    #: whether ``apply`` accepts an input second moment ``hessian`` (error-feedback rounding)
    uses_hessian: ClassVar[bool] = False
    #: whether ``apply`` accepts a per-output-channel ``row_importance``
    uses_row_importance: ClassVar[bool] = False

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict, tagged with ``transform`` and ``version``; nested configs recurse."""
        out: dict[str, Any] = {"transform": self.name, "version": self.version}
        for f in dataclasses.fields(self):
            out[f.name] = _to_jsonable(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transform:
        """Inverse of :meth:`to_dict`. On the base class the ``transform`` tag picks the subclass."""
        return config_from_dict(data, expect=None if cls is Transform else cls)

    @classmethod
    def from_json(cls, text: str) -> Transform:
        return cls.from_dict(json.loads(text))

    # -- the contract ----------------------------------------------------------------------------
    def apply(self, weight: torch.Tensor, *, importance: torch.Tensor | None = None,
              hessian: torch.Tensor | None = None, row_importance: torch.Tensor | None = None,
              measure: bool = True) -> Transformed:
        """Transform ``weight``; with ``measure`` the result carries its reconstruction's error.

        ``importance``: optional non-negative weight per input channel (``weight.shape[1:]`` flattened),
        e.g. the mean squared input activation from calibration data. Transforms with
        ``uses_importance`` then minimise the importance-weighted error (the output error of a
        Linear layer); the others raise ValueError.

        ``hessian``: optional input second moment ``E[x x^T]`` (``[in, in]``) of a 2-D weight; transforms
        with ``uses_hessian`` then round with error feedback (GPTQ order) onto their usual grid.

        ``row_importance``: optional non-negative weight per output channel (``weight.shape[0]``) of a 2-D
        weight, e.g. how much the model output moves per unit of error in that row (calibration
        ``rows``); transforms with ``uses_row_importance`` then scale their steps row by row.
        """
        w = check_weight(weight, self.name)
        if importance is not None:
            if not self.uses_importance:
                raise ValueError(f"{type(self).__name__} does not use importance; it is taken by "
                                 "EntropyCodedQuant, MagnitudePrune, NMPrune and pipelines holding them")
            importance = check_importance(importance, w.shape, self.name)
        extra: dict[str, torch.Tensor] = {}
        if row_importance is not None:
            if not self.uses_row_importance:
                raise ValueError(f"{type(self).__name__} does not use row_importance; it is taken by "
                                 "EntropyCodedQuant and pipelines whose quantizer is one")
            extra["row_importance"] = check_row_importance(row_importance, w.shape, self.name)
        compute = w if self.compute_dtype is None else w.to(self.compute_dtype)
        if hessian is not None:
            if not self.uses_hessian:
                raise ValueError(f"{type(self).__name__} does not use a hessian; it is taken by EntropyCodedQuant "
                                 "(alone in a pipeline)")
            n_in = w.shape[1] if w.dim() == 2 else -1
            if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (n_in, n_in):
                got = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
                raise ValueError(f"{self.name}: hessian must be [in, in] = [{n_in}, {n_in}] for a 2-D weight of "
                                 f"shape {tuple(w.shape)}, got {got}")
            extra["hessian"] = hessian
        tensors, meta, packed = self._apply(compute, importance, **extra)
        meta = {"transform": self.name, "config": self.to_dict(), "shape": list(w.shape),
                "dtype": str(w.dtype).removeprefix("torch."), **meta}
        out = Transformed(tensors, meta, packed_bits=packed)
        if measure:
            out.error = WeightError.measure(w, self.reconstruct(tensors, meta))
        return out

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        """Float32 ``weight`` (see ``compute_dtype``) -> :data:`Encoded`. Subclasses implement."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _apply")

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """Rebuild the (approximate) weight, in the original shape and dtype."""
        raise NotImplementedError(f"{type(self).__name__} does not implement reconstruct")


def reconstruct(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
    """Rebuild a weight from stored tensors and meta alone (the config is read from ``meta``)."""
    if "config" not in meta:
        raise ValueError("meta has no 'config' entry; pass the meta dict returned by Transform.apply")
    return config_from_dict(meta["config"]).reconstruct(tensors, meta)


def config_from_dict(data: dict[str, Any], expect: type[Transform] | None = None) -> Transform:
    """Build a transform config from :meth:`Transform.to_dict` output, validating tag and version."""
    if not isinstance(data, dict) or "transform" not in data:
        raise ValueError(f"a transform config must be a dict with a 'transform' key, got {data!r}")
    data = dict(data)
    name = data.pop("transform")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown transform {name!r}; known: {known_transforms()}")
    if expect is not None and not issubclass(cls, expect):
        raise ValueError(f"config is a {name!r} transform, expected {expect.name!r}")
    version = data.pop("version", cls.version)
    if version != cls.version:
        raise ValueError(
            f"{name!r} config has version {version!r}; this llmcomp-hf reads version {cls.version}. "
            "Upgrade llmcomp-hf or re-create the config."
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for transform {name!r}; valid fields: {sorted(fields)}")
    return cls(**{k: _from_jsonable(v) for k, v in data.items()})


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Transform):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and "transform" in value:
        return config_from_dict(value)
    if isinstance(value, list):
        return tuple(_from_jsonable(v) for v in value)
    return value


# -- validation helpers used by the configs' __post_init__ -------------------------------------------

def check_int(cls: str, field_name: str, value: Any, lo: int, hi: int, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{cls}.{field_name} must be an int in [{lo}, {hi}], got {value!r}{hint}")


def check_float(cls: str, field_name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False, hint: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{cls}.{field_name} must be a number in {rng}, got {value!r}{hint}")


def check_choice(cls: str, field_name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{cls}.{field_name} must be one of {list(choices)}, got {value!r}")


def check_weight(weight: Any, what: str) -> torch.Tensor:
    """Validate a weight given to ``apply``: a non-empty, finite, floating-point torch tensor."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor weight, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise ValueError(f"{what}: weight must be floating point, got {weight.dtype}; pass the float weight")
    if weight.numel() == 0:
        raise ValueError(f"{what}: weight is empty (shape {tuple(weight.shape)}); skip empty tensors")
    w = weight.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{what}: weight holds NaN or Inf; lossy transforms need finite values "
                         "(store such tensors losslessly instead)")
    return w


def check_row_importance(row_importance: Any, shape: torch.Size, what: str) -> torch.Tensor:
    """Validate a per-output-channel importance vector for a 2-D weight of ``shape``; float32."""
    if len(shape) != 2:
        raise ValueError(f"{what}: row_importance needs a 2-D weight [out, in], got shape {tuple(shape)}")
    return _channel_weights(row_importance, shape[0], "row_importance", "output", shape, what)


def check_importance(importance: Any, shape: torch.Size, what: str) -> torch.Tensor:
    """Validate a per-input-channel importance vector for a weight of ``shape``; float32, flattened."""
    n_in = math.prod(shape[1:]) if len(shape) >= 2 else 0
    return _channel_weights(importance, n_in, "importance", "input", shape, what)


def _channel_weights(values: Any, n: int, arg: str, side: str, shape: torch.Size, what: str) -> torch.Tensor:
    """``values`` as float32 [n] when it is a tensor of ``n > 0`` finite, non-negative, not all zero entries."""
    if not isinstance(values, torch.Tensor) or values.numel() != n or n == 0:
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{what}: {arg} must be a tensor with one entry per {side} channel ({n} for "
                         f"weight shape {tuple(shape)}), got {got}")
    imp = values.detach().reshape(-1).to(torch.float32)
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()) or not bool((imp > 0).any()):
        raise ValueError(f"{what}: {arg} must be finite, non-negative and not all zero")
    return imp
