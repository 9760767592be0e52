"""CUDA decoder on a real GPU: every simulator case again, plus sizes the simulator cannot run.

Skipped cleanly when torch sees no CUDA device or numba-cuda is missing.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import assert_same_bits, tensor_of
from .test_cuda_sim import CASES, run_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(scope="module", autouse=True)
def _numba_cuda() -> None:
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    if not cuda.is_available():
        pytest.skip("numba.cuda sees no GPU")


@pytest.mark.parametrize("case", CASES)
def test_gpu_matches_cpu(case: str) -> None:
    run_case(case, device="cuda")


@pytest.mark.parametrize("coder", ["huffman", "rans"])
@pytest.mark.parametrize("dtype,numel", [("bfloat16", 3 * 65536 + 1234), ("float32", 2 * 65536 + 77), ("float16", 65536)])
def test_default_block_size(dtype: str, coder: str, numel: int) -> None:
    """Full-size blocks (65536) with a partial last block, on the default stream."""
    from llmcomp_hf.codec import decode, encode
    from llmcomp_hf.codec.cuda import decode_cuda

    enc = encode(tensor_of(dtype, numel, "specials", seed=11), coder=coder)
    got = decode_cuda(enc)
    assert got.is_cuda
    assert_same_bits(got.cpu(), decode(enc), f"{dtype}/{coder}")


def test_resident_decode_on_side_stream() -> None:
    """Decode repeatedly on a non-default stream into a shared scratch, without host syncs."""
    from llmcomp_hf.codec import decode, encode
    from llmcomp_hf.codec.cuda import DeviceEncodedTensor

    encs = [encode(tensor_of("bfloat16", 200_000 + i, "skewed", seed=i), coder=c) for i, c in enumerate(["huffman", "rans"])]
    stream = torch.cuda.Stream()
    devs = [DeviceEncodedTensor.from_encoded(e, stream=stream) for e in encs]
    scratch = torch.empty(max(d.scratch_nbytes for d in devs), dtype=torch.uint8, device="cuda")
    outs = [torch.empty(d.shape, dtype=d.dtype, device="cuda") for d in devs]
    for _ in range(3):
        for d, o in zip(devs, outs):
            d.decode(o, scratch=scratch, stream=stream)
    for d, o, e in zip(devs, outs, encs):
        d.check(stream=stream)
        assert_same_bits(o.cpu(), decode(e), "side stream")


def test_wrong_out_is_rejected() -> None:
    from llmcomp_hf.codec import encode
    from llmcomp_hf.codec.cuda import decode_cuda

    enc = encode(tensor_of("bfloat16", 1000, "skewed", seed=3))
    with pytest.raises(ValueError, match="out must be"):
        decode_cuda(enc, out=torch.empty(1000, dtype=torch.float16, device="cuda"))
