"""Embedding-quality metrics: how much a modified sentence-embedding model drifts from the original.

For sentence-transformers BERT models (e.g. all-MiniLM-L6-v2) embeddings are the attention-mask
mean of the last hidden state, L2-normalised. Compared against the original model's embeddings:

* mean / min cosine similarity, sentence by sentence;
* Spearman correlation of the two pairwise cosine-similarity matrices (upper triangle), i.e. does
  the modified model still rank sentence pairs the same way.

Only torch is needed here; models and tokenizer are passed in (any ``transformers`` encoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


def load_sentences(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file (one sentence per line)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    sentences = [s.strip() for s in lines if s.strip()]
    if not sentences:
        raise ValueError(f"no sentences in {str(path)!r}; expected one sentence per line")
    return sentences


@torch.no_grad()
def embed(model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 64,
          max_length: int = 128) -> torch.Tensor:
    """Mean-pooled (over the attention mask), L2-normalised last hidden states, float32 ``[n, hidden]``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[i: i + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        out.append(_embeddings(model, batch).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _embeddings(model: Any, batch: Any) -> torch.Tensor:
    """One batch through ``model``: attention-mask mean of the last hidden state, L2-normalised (float32)."""
    out_ = model(**batch, output_hidden_states=True)
    last = getattr(out_, "last_hidden_state", None)  # base models; others (LM heads): last hidden state
    hidden = (last if last is not None else out_.hidden_states[-1]).to(torch.float32)
    mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (as scipy.stats.rankdata)."""
    x = x.reshape(-1).to(torch.float64)
    order = torch.argsort(x, stable=True)
    xs = x[order]
    # runs of equal values: first index of each run, then mean of 1-based positions within the run
    new_run = torch.ones_like(xs, dtype=torch.bool)
    new_run[1:] = xs[1:] != xs[:-1]
    run_id = torch.cumsum(new_run, 0) - 1
    pos = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    n_runs = int(run_id[-1]) + 1 if x.numel() else 0
    run_mean = torch.zeros(n_runs, dtype=torch.float64).index_add_(0, run_id, pos)
    run_mean /= torch.bincount(run_id, minlength=n_runs).to(torch.float64)
    ranks = torch.empty_like(x)
    ranks[order] = run_mean[run_id]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally long 1-D samples (NaN when one is constant)."""
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"spearman needs two samples of equal length >= 2, got {a.numel()} and {b.numel()}")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")


@dataclass(frozen=True)
class EmbeddingQuality:
    """Agreement of modified embeddings with the originals (1.0 = identical)."""

    mean_cosine: float
    min_cosine: float
    spearman: float  # of the pairwise cosine similarities, upper triangle
    n_sentences: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_embeddings(reference: torch.Tensor, modified: torch.Tensor) -> EmbeddingQuality:
    """Compare two ``[n, d]`` embedding matrices row by row and by their pairwise-similarity structure."""
    if reference.shape != modified.shape or reference.dim() != 2 or reference.shape[0] < 3:
        raise ValueError(f"need two [n, d] embedding matrices of the same shape with n >= 3, got "
                         f"{tuple(reference.shape)} and {tuple(modified.shape)}")
    ref = torch.nn.functional.normalize(reference.to(torch.float64), dim=-1)
    mod = torch.nn.functional.normalize(modified.to(torch.float64), dim=-1)
    cos = (ref * mod).sum(-1)
    iu = torch.triu_indices(ref.shape[0], ref.shape[0], offset=1)
    sim_ref, sim_mod = (ref @ ref.T)[iu[0], iu[1]], (mod @ mod.T)[iu[0], iu[1]]
    return EmbeddingQuality(float(cos.mean()), float(cos.min()), spearman(sim_ref, sim_mod), ref.shape[0])


def embedding_quality(original: Any, modified: Any, tokenizer: Any, sentences: Sequence[str],
                      reference: torch.Tensor | None = None, batch_size: int = 64) -> EmbeddingQuality:
    """Embed ``sentences`` with both models and compare. Pass ``reference`` (the original model's
    embeddings, from :func:`embed`) to skip recomputing them when scoring many variants;
    ``original`` may then be None."""
    if reference is None:
        if original is None:
            raise ValueError("give the original model or its reference embeddings")
        reference = embed(original, tokenizer, sentences, batch_size)
    return compare_embeddings(reference, embed(modified, tokenizer, sentences, batch_size))


# -- calibration statistics for rate allocation -------------------------------------------------------

def _linear_weights(model: Any, names: Sequence[str] | None) -> dict[str, Any]:
    """``{"<module>.weight": module}`` for the model's nn.Linear layers (or the given weight names)."""
    found = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if names is None:
        return found
    missing = sorted(set(names) - set(found))
    if missing:
        raise ValueError(f"not nn.Linear weights of this model: {missing[:5]}")
    return {n: found[n] for n in names}


def output_importance(model: Any, tokenizer: Any, sentences: Sequence[str], names: Sequence[str] | None = None,
                      draws: int = 16, batch_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """How much the sentence embeddings move per unit of squared error in each output channel (row)
    of each Linear weight: the row-wise geometric mean of the Gauss-Newton diagonal.

    For embeddings ``e`` (mean-pooled, L2-normalised last hidden states, as :func:`embed`),
    ``1 - cos(e, e')`` is ``~ |e - e'|^2 / 2``, whose Gauss-Newton diagonal for weight entry ``W_ij``
    is ``E_r[(d(r . e)/dW_ij)^2]`` over random Gaussian directions ``r``; ``draws`` of them per batch
    estimate it (each sentence with its own ``r``). A row's value is the geometric mean of its
    entries (so a weight's error cost factors as row importance x column importance), scaled to a
    geometric mean of 1 per weight. Keys are weight names; the model's parameters are left as they were (gradients are not kept).
    """
    layers = _linear_weights(model, names)
    params = list(model.parameters())
    was_grad = [p.requires_grad for p in params]
    sums = {n: torch.zeros(m.weight.shape, dtype=torch.float64) for n, m in layers.items()}
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    try:
        for p in params:
            p.requires_grad_(False)
        for m in layers.values():
            m.weight.requires_grad_(True)
        for i in range(0, len(sentences), batch_size):
            batch = tokenizer(list(sentences[i: i + batch_size]), padding=True, truncation=True,
                              max_length=128, return_tensors="pt").to(device)
            for _ in range(draws):
                with torch.enable_grad():  # callers may be inside no_grad
                    e = _embeddings(model, batch)
                    r = torch.randn(e.shape, generator=gen).to(e.device)
                    grads = torch.autograd.grad((e * r).sum(), [m.weight for m in layers.values()], allow_unused=True)
                for name, grad in zip(layers, grads):
                    if grad is not None:
                        sums[name] += grad.detach().to(torch.float64).cpu().square()
    finally:
        for p, flag in zip(params, was_grad):
            p.requires_grad_(flag)
    out = {}
    for name, f in sums.items():
        top = float(f.max())
        if top <= 0:  # the embeddings do not depend on this weight: all rows alike
            out[name] = torch.ones(f.shape[0], dtype=torch.float32)
            continue
        rows = f.reshape(f.shape[0], -1).clamp(min=top * 1e-12).log().mean(1)
        out[name] = (rows - rows.mean()).exp().to(torch.float32)  # scaled to geometric mean 1
    return out


@torch.no_grad()
def input_importance(model: Any, tokenizer: Any, sentences: Sequence[str], names: Sequence[str] | None = None,
                     batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean squared input activation per input channel of each Linear layer (over real tokens only).

    This is the diagonal of the input second-moment matrix: the output error of ``y = W x`` under
    independent weight errors is ``sum_j E[x_j^2] * ||dW[:, j]||^2``. Keys are weight names.
    """
    layers = _linear_weights(model, names)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask_holder: list[torch.Tensor] = []

    def hook(name: str) -> Any:
        def record(_module: Any, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0].to(torch.float64)
            if mask_holder and x.dim() == 3 and x.shape[:2] == mask_holder[0].shape:
                x = x[mask_holder[0].bool()]  # drop padding tokens
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + x.square().sum(0).cpu()
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        device = next(model.parameters()).device
        for i in range(0, len(sentences), batch_size):
            batch = tokenizer(list(sentences[i: i + batch_size]), padding=True, truncation=True,
                              max_length=128, return_tensors="pt").to(device)
            mask_holder[:] = [batch["attention_mask"]]
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / max(counts[n], 1)).to(torch.float32) for n in layers if n in sums}


@torch.no_grad()
def tensor_sensitivity(model: Any, tokenizer: Any, sentences: Sequence[str], probe: Any,
                       names: Sequence[str] | None = None, reference: torch.Tensor | None = None,
                       batch_size: int = 64) -> dict[str, float]:
    """Embedding drift per unit of relative weight MSE, one Linear weight at a time.

    Each weight is replaced by ``probe.apply(w)``'s reconstruction (e.g. ``EntropyCodedQuant(step=0.1)``),
    the sentences re-embedded, and ``(1 - mean cosine) / rel_mse`` recorded; the weight is then restored.
    Feed the result to ``llmcomp_hf.transforms.allocate.allocate_steps``.
    """
    ref = embed(model, tokenizer, sentences, batch_size) if reference is None else reference
    out: dict[str, float] = {}
    for name, module in _linear_weights(model, names).items():
        original = module.weight.detach().clone()
        t = probe.apply(original)
        try:
            module.weight.copy_(t.reconstruct())
            drift = 1.0 - compare_embeddings(ref, embed(model, tokenizer, sentences, batch_size)).mean_cosine
        finally:
            module.weight.copy_(original)
        out[name] = max(drift, 0.0) / t.error.rel_mse if t.error.rel_mse > 0 else 0.0
    return out
