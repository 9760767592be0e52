"""Calibration for lossy stages: statistics measured once on sample texts, kept in a small file.

:func:`calibrate` runs texts through a model and writes a safetensors file holding, for every
``nn.Linear`` weight ``W``:

* ``importance.W``: mean squared input activation per input channel (float32), which
  EntropyCodedQuant turns into per-column steps;
* ``sensitivity.W``: drift of the mean-pooled last hidden state per unit of relative weight MSE
  (float64, one value), which :func:`~llmcomp_hf.transforms.allocate_steps` turns into per-tensor steps;
* optionally (``hessian=True``) ``hessian.W``: the input second moment ``E[x x^T]`` (float32,
  ``[in, in]``: large, ``in^2 * 4`` bytes per weight) for error-feedback rounding (transforms/gptq.py);
* optionally (``rows=True``) ``rows.W``: how much the embeddings move per unit of error in each output
  channel (float32, ``[out]``, :func:`~llmcomp_hf.quality.output_importance`), which EntropyCodedQuant
  turns into per-row steps;

plus JSON metadata under ``llmcomp.calibration``: format version, source model, number of texts and
real tokens, SHA-256 of the texts, the sensitivity probe and each weight's shape.

``CompressionConfig(calibration=path)`` uses the file: :class:`CalibratedPlan` gives every selected
weight its stage config (allocated step) and importance. The quantizer (compress on load) and
``llmcomp compress`` build the same plan, so they store identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from llmcomp_hf.errors import FormatError, LlmcompError

CALIBRATION_FORMAT = "llmcomp.calibration"
CALIBRATION_VERSION = 1
META_KEY = "llmcomp.calibration"
#: relative ECQ step of the sensitivity probe (relative MSE ~1.2e-3 per probed tensor)
PROBE_STEP = 0.12
#: default use of a calibration file: importance-scaled columns and per-tensor step allocation
DEFAULT_USE = {"importance": True, "allocate": True, "max_step": 1.0, "gptq": False, "rows": False}
FIX = "run `llmcomp calibrate SRC --texts FILE -o calib.safetensors` on the model you compress"


@dataclass
class Calibration:
    """Per-weight calibration statistics (keys: weight names of the calibrated model) and metadata."""

    importance: dict[str, torch.Tensor]
    sensitivity: dict[str, float]
    shapes: dict[str, list[int]]
    meta: dict[str, Any] = field(default_factory=dict)
    hessian: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, torch.Tensor] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration file (safetensors); returns its path."""
        from safetensors.torch import save_file

        tensors = {f"importance.{k}": v.detach().to(torch.float32).contiguous() for k, v in self.importance.items()}
        tensors.update({f"sensitivity.{k}": torch.tensor([v], dtype=torch.float64) for k, v in self.sensitivity.items()})
        tensors.update({f"hessian.{k}": v.detach().to(torch.float32).contiguous() for k, v in self.hessian.items()})
        tensors.update({f"rows.{k}": v.detach().to(torch.float32).contiguous() for k, v in self.rows.items()})
        meta = {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, **self.meta, "shapes": self.shapes}
        path = Path(path)
        save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a file written by :meth:`save`; ValueError naming the file and the fix otherwise."""
        from llmcomp_hf.format.safetensors_file import SafetensorsFile

        meta = read_meta(path)
        try:
            with SafetensorsFile(path) as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (LlmcompError, OSError) as exc:
            raise FormatError(f"calibration file {os.fspath(path)!r} is unreadable ({exc}); {FIX}") from exc
        imp = {k[len("importance."):]: v for k, v in tensors.items() if k.startswith("importance.")}
        sens = {k[len("sensitivity."):]: float(v.reshape(-1)[0]) for k, v in tensors.items()
                if k.startswith("sensitivity.")}
        hess = {k[len("hessian."):]: v for k, v in tensors.items() if k.startswith("hessian.")}
        rows = {k[len("rows."):]: v for k, v in tensors.items() if k.startswith("rows.")}
        shapes = {k: list(v) for k, v in meta.pop("shapes", {}).items()}
        return cls(imp, sens, shapes, {k: v for k, v in meta.items() if k not in ("format", "version")}, hess, rows)

    @property
    def names(self) -> list[str]:
        """Weights the file covers."""
        return sorted(self.shapes)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a calibration file (checks that it is one, and its version)."""
    from llmcomp_hf.format.safetensors_file import SafetensorsFile

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"calibration file {os.fspath(p)!r} does not exist; {FIX}")
    try:
        with SafetensorsFile(p) as handle:
            raw = handle.metadata().get(META_KEY)
    except (LlmcompError, OSError) as exc:  # not safetensors, unreadable
        raise FormatError(f"calibration file {os.fspath(p)!r} is unreadable ({exc}); {FIX}") from exc
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{os.fspath(p)!r} is not an llmcomp calibration file; {FIX}")
    if meta.get("version") != CALIBRATION_VERSION:
        raise ValueError(f"calibration file {os.fspath(p)!r} has version {meta.get('version')!r}, this llmcomp-hf "
                         f"reads {CALIBRATION_VERSION}: {FIX}")
    return meta


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a config records about a calibration file: name, SHA-256, texts, tokens, source model."""
    meta = read_meta(path)
    return {"file": Path(path).name, "sha256": file_sha256(path), "texts": meta.get("texts"),
            "tokens": meta.get("tokens"), "source": meta.get("source")}


# -- measuring -----------------------------------------------------------------------------------------

@torch.no_grad()
def calibrate(model: Any, tokenizer: Any, texts: Sequence[str], path: str | os.PathLike | None = None, *,
              sensitivity: bool = True, hessian: bool = False, rows: bool = False,
              batch_size: int = 32) -> Calibration:
    """Measure the statistics of every ``nn.Linear`` weight of ``model`` on ``texts``; save to ``path``.

    ``sensitivity`` re-embeds the texts once per weight (one forward pass per weight and batch);
    without it the file supports importance but not step allocation. ``hessian`` also stores each
    weight's input second moment (``calibration_use={"gptq": true}``); ``rows`` each weight's output-channel
    importance (``calibration_use={"rows": true}``; 16 backward passes per batch). Texts are truncated to 128
    tokens. A tokenizer without a pad token pads with its EOS token meanwhile.
    """
    from llmcomp_hf.quality import embed, input_importance, output_importance, tensor_sensitivity
    from llmcomp_hf.transforms import EntropyCodedQuant

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("calibrate needs at least one non-empty text")
    restore_pad = getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None
    if restore_pad:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    try:
        imp = input_importance(model, tokenizer, texts, batch_size=batch_size)
        hess = input_second_moments(model, tokenizer, texts, batch_size) if hessian else {}
        row_imp = output_importance(model, tokenizer, texts, batch_size=batch_size) if rows else {}
        tokens = sum(len(tokenizer(t, truncation=True, max_length=128)["input_ids"]) for t in texts)
        probe = EntropyCodedQuant(step=PROBE_STEP)
        sens: dict[str, float] = {}
        if sensitivity:
            ref = embed(model, tokenizer, texts, batch_size)
            sens = tensor_sensitivity(model, tokenizer, texts, probe, reference=ref, batch_size=batch_size)
    finally:
        model.train(was_training)
        if restore_pad:
            tokenizer.pad_token = None
    weights = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    meta = {"source": str(getattr(getattr(model, "config", None), "name_or_path", "") or ""),
            "texts": len(texts), "tokens": tokens,
            "texts_sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(),
            "probe": probe.to_dict() if sensitivity else None}
    out = Calibration(imp, sens, {k: list(weights[k].shape) for k in imp}, meta, hess, row_imp)
    if path is not None:
        out.save(path)
    return out


@torch.no_grad()
def input_second_moments(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` over real tokens of the input of every nn.Linear (float32 ``[in, in]``, by weight name)."""
    layers = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor] = []

    def hook(name: str) -> Any:
        def record(_module: Any, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0].to(torch.float64)
            x = x[mask[0].bool()] if x.dim() == 3 and x.shape[:2] == mask[0].shape else x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + (x.T @ x).cpu()
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        device = next(model.parameters()).device
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[i: i + batch_size]), padding=True, truncation=True, max_length=128,
                              return_tensors="pt").to(device)
            mask[:] = [batch["attention_mask"]]
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / max(counts[n], 1)).to(torch.float32) for n in layers if n in sums}


# -- using ---------------------------------------------------------------------------------------------

def match_names(names: Iterable[str], known: Iterable[str]) -> dict[str, str | None]:
    """Map each weight name to a calibration key: equal, or equal after dropping leading segments of
    either one (``bert.encoder...`` vs ``encoder...``); None when there is no single such key."""
    known = list(known)
    keys = set(known)
    out: dict[str, str | None] = {}
    for name in names:
        if name in keys:
            out[name] = name
            continue
        hits = [k for k in known if k.endswith("." + name) or name.endswith("." + k)]
        out[name] = hits[0] if len(hits) == 1 else None
    return out


class CalibratedPlan:
    """The stage config and importance of every selected weight under a calibrated config.

    Built from the config's calibration file and the names of the weights the stages apply to
    (steps are allocated over exactly these). Raises ValueError naming the file and the fix when
    the file does not match the config's SHA-256 or lacks a weight.
    """

    def __init__(self, config: Any, names: Iterable[str]) -> None:
        path = config.calibration
        use = {**DEFAULT_USE, **(config.calibration_use or {})}
        recorded = (config.calibration_info or {}).get("sha256")
        read_meta(path)  # exists, and is a calibration file
        if recorded and file_sha256(path) != recorded:
            raise ValueError(f"calibration file {path!r} changed since the config recorded it (SHA-256 {recorded[:12]}"
                             "...); pass the original file, or re-create the config with this one")
        calib = Calibration.load(path)
        names = sorted(names)
        mapping = match_names(names, calib.names)
        missing = [n for n, k in mapping.items() if k is None]
        if missing:
            raise ValueError(
                f"calibration file {path!r} has no statistics for {len(missing)} weight(s) the stages apply to, e.g. "
                f"{missing[:3]} (it covers {len(calib.names)} nn.Linear weights of {calib.meta.get('source')!r}); "
                f"{FIX}, or exclude them with modules_to_not_convert")
        self.path = path
        self.keys = mapping
        self.calibration = calib
        self.info = {"sha256": recorded or file_sha256(path), "texts": calib.meta.get("texts")}
        base = config.pipeline()
        self._steps: dict[str, float] = {}
        if use["allocate"]:
            absent = [n for n in names if mapping[n] not in calib.sensitivity]
            if absent:
                raise ValueError(f"calibration file {path!r} holds no sensitivity for {absent[:3]} (made with "
                                 "sensitivity=False); re-run calibrate with sensitivity, or set "
                                 "calibration_use={'allocate': false}")
            from llmcomp_hf.transforms import allocate_steps

            keys = sorted(set(mapping.values()))  # by calibration key: the same sums whatever the weight names
            numel = {k: math.prod(calib.shapes[k]) for k in keys}
            sens = {k: calib.sensitivity[k] for k in keys}
            steps = allocate_steps(sens, numel, _ecq_stage(base).step, hi=float(use["max_step"])) if keys else {}
            self._steps = {n: steps[mapping[n]] for n in names}
        if use["gptq"]:
            absent = [n for n in names if mapping[n] not in calib.hessian]
            if absent:
                raise ValueError(f"calibration file {path!r} holds no input second moments for {absent[:3]}; re-run "
                                 "`llmcomp calibrate ... --hessian`, or set calibration_use={'gptq': false}")
        if use["rows"]:
            absent = [n for n in names if mapping[n] not in calib.rows]
            if absent:
                raise ValueError(f"calibration file {path!r} holds no output-channel importance for {absent[:3]}; "
                                 "re-run `llmcomp calibrate ... --rows`, or set calibration_use={'rows': false}")
        self._base = base
        self._importance = bool(use["importance"])
        self._gptq = bool(use["gptq"])
        self._rows = bool(use["rows"])

    def pipeline(self, name: str) -> Any:
        """The Transform for weight ``name`` (the config's stages, with its allocated ECQ step)."""
        if name not in self._steps:
            return self._base
        stages = tuple(replace(s, step=self._steps[name]) if s is _ecq_stage(self._base) else s
                       for s in self._base.stages)
        return replace(self._base, stages=stages)

    def importance(self, name: str, shape: Sequence[int]) -> torch.Tensor | None:
        """Importance of weight ``name`` (None when the config does not use it); LlmcompError on a shape mismatch."""
        key = self.keys.get(name)
        if key is None:
            raise LlmcompError(f"weight {name!r} is not in the calibration plan of {self.path!r}; {FIX}")
        if list(shape) != list(self.calibration.shapes[key]):
            raise LlmcompError(f"calibration file {self.path!r} was made for another model: weight {name!r} has shape "
                               f"{list(shape)} here, {self.calibration.shapes[key]} there; {FIX}")
        return self.calibration.importance[key] if self._importance else None


    def hessian(self, name: str) -> torch.Tensor | None:
        """Input second moment of weight ``name`` when the config rounds with error feedback, else None."""
        return self.calibration.hessian[self.keys[name]] if self._gptq else None

    def row_importance(self, name: str) -> torch.Tensor | None:
        """Output-channel importance of weight ``name`` when the config scales steps by row, else None."""
        return self.calibration.rows[self.keys[name]] if self._rows else None


def _ecq_stage(pipeline: Any) -> Any:
    from llmcomp_hf.transforms import EntropyCodedQuant

    return next((s for s in pipeline.stages if isinstance(s, EntropyCodedQuant)), None)


def check_use(owner: str, use: Mapping[str, Any], stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate ``calibration_use`` against the stages; returns it with defaults filled in."""
    unknown = sorted(set(use) - set(DEFAULT_USE))
    if unknown:
        raise ValueError(f"{owner}.calibration_use has unknown keys {unknown}; known: {sorted(DEFAULT_USE)}")
    out = {**DEFAULT_USE, **use}
    if not all(isinstance(out[k], bool) for k in ("importance", "allocate", "gptq", "rows")):
        raise ValueError(f"{owner}.calibration_use importance/allocate/gptq/rows must be true or false, got {dict(use)!r}")
    ms = out["max_step"]
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not (0 < ms <= 16 and math.isfinite(ms)):
        raise ValueError(f"{owner}.calibration_use.max_step must be a number in (0, 16], got {ms!r}")
    kinds = [s.get("transform") for s in stages]
    if out["allocate"] and not any(s.get("transform") == "ecq" and s.get("step") is not None for s in stages):
        raise ValueError(f"{owner}.calibration_use.allocate needs an 'ecq' stage with a step (the average the "
                         f"per-tensor steps are allocated around), got stages {kinds}")
    if out["gptq"] and kinds != ["ecq"]:
        raise ValueError(f"{owner}.calibration_use.gptq (error-feedback rounding) needs a single 'ecq' stage, got "
                         f"stages {kinds}")
    if out["rows"] and ("lowrank" in kinds or "ecq" not in kinds):
        raise ValueError(f"{owner}.calibration_use.rows (per-row steps) needs an 'ecq' stage and no lowrank, got "
                         f"stages {kinds}; set calibration_use={{'rows': false}} or change the stages")
    if out["importance"] and ("lowrank" in kinds or not {"ecq", "nm_prune", "prune"} & set(kinds)):
        raise ValueError(f"{owner}.calibration_use.importance is used by ecq and pruning stages without lowrank, got "
                         f"stages {kinds}; set calibration_use={{'importance': false}} or change the stages")
    return out


__all__ = ["Calibration", "CalibratedPlan", "calibrate", "file_info", "file_sha256", "input_second_moments",
           "match_names", "read_meta"]
