"""CUDA decoder under numba's CUDA simulator: bit-exact against the CPU decoder, no GPU needed.

The simulator must be switched on before numba is imported, so every case runs in ONE child
process (``python tests/codec/test_cuda_sim.py`` with ``NUMBA_ENABLE_CUDASIM=1``); the rest of
the suite never sees the simulator. The child prints one JSON line per case; each case is then
reported here as its own test. Inputs are tiny (block_size=256): the simulator runs every CUDA
thread as a Python thread.

A second child compiles every kernel to PTX for sm_90 (no GPU needed, but libNVVM must be
installed, e.g. ``pip install 'numba-cuda[cu13]'``): that catches typing errors the simulator
cannot see, since it runs kernels as plain Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"

# (dtype, coder, kind, numel): numel = 549 leaves a 37-element last block, 257..259 leave 1..3
ROUNDTRIP = [
    *[(d, c, "specials", 549) for d in ("bfloat16", "float16", "float32", "int8") for c in ("huffman", "rans")],
    ("bfloat16", "huffman", "skewed", 257),
    ("bfloat16", "rans", "skewed", 258),
    ("float16", "huffman", "skewed", 259),
    ("float32", "rans", "sparse", 300),
    ("bfloat16", "huffman", "const", 600),
    ("float32", "rans", "const", 300),
    ("bfloat16", "raw", "specials", 300),
    ("float64", "huffman", "skewed", 300),
    ("int64", "rans", "skewed", 300),
    ("int16", "huffman", "skewed", 300),
    ("int32", "rans", "specials", 300),
    ("uint8", "raw", "uniform", 301),
    ("bool", "huffman", "skewed", 300),
    ("float8_e4m3fn", "rans", "specials", 300),
    ("float8_e5m2", "huffman", "skewed", 300),
]
# (what, dtype, coder): one targeted fault each; CPU and GPU must raise the same error class
# and name the same block and plane.
CORRUPTIONS = [
    ("stream_byte", "bfloat16", "huffman"),
    ("code_length", "bfloat16", "huffman"),
    ("stream_lengths", "float32", "huffman"),
    ("bitmap_one_symbol", "bfloat16", "huffman"),
    ("section_length", "bfloat16", "huffman"),
    ("mode_byte", "float32", "rans"),
    ("trailing_byte", "bfloat16", "rans"),
    ("rans_frequency", "bfloat16", "rans"),
    ("rans_state", "int8", "rans"),
    ("rans_word", "bfloat16", "rans"),
    ("header_checksum", "float16", "huffman"),
]
# golden fixtures (tests/data/golden: golden.json manifest + golden.npz arrays NAME.data/index/raw)
_MANIFEST = GOLDEN / "golden.json"
GOLDEN_NAMES = sorted(json.loads(_MANIFEST.read_text())) if _MANIFEST.exists() else []
EXTRA = ["tiny_shapes", "device_resident_reuse", "from_parts", "misaligned_out", "verify_false_still_checks",
         "refuses_version_2", "refuses_rans_scale"]
CASES = (
    [f"roundtrip-{d}-{c}-{k}-{n}" for d, c, k, n in ROUNDTRIP]
    + [f"corrupt-{w}-{d}-{c}" for w, d, c in CORRUPTIONS]
    + [f"golden-{name}" for name in GOLDEN_NAMES]
    + [f"extra-{e}" for e in EXTRA]
)


@pytest.fixture(scope="module")
def sim_results() -> dict[str, str]:
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install 'llmcomp-hf[cuda]')")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            results.update(json.loads(line))
    if not results:
        pytest.fail(f"simulator child produced no results (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return results


@pytest.mark.parametrize("case", CASES)
def test_cuda_simulator(sim_results: dict[str, str], case: str) -> None:
    assert case in sim_results, f"{case} did not run (child crashed?)"
    assert sim_results[case] == "ok", sim_results[case]


def test_kernels_compile_to_ptx() -> None:
    """Type-check every kernel for sm_90 with the real CUDA compiler (skips without libNVVM)."""
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(
        [sys.executable, __file__, "--ptx"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if "NVVM-MISSING" in proc.stdout:
        pytest.skip("CUDA compiler libraries (NVVM/NVRTC) not installed (pip install 'numba-cuda[cu13]'): PTX check skipped")
    assert proc.returncode == 0 and "PTX-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# Child side (runs under the simulator; also reused by test_cuda_gpu.py on a real GPU)
# ---------------------------------------------------------------------------------------------

def check_roundtrip(dtype: str, coder: str, kind: str, numel: int, device: str = "cuda") -> None:
    """GPU decode == CPU decode == original, bit for bit."""
    from llmcomp_hf.codec import decode, encode
    from llmcomp_hf.codec.cuda import decode_cuda
    from .helpers import assert_same_bits, tensor_of

    t = tensor_of(dtype, numel, kind, seed=numel)
    enc = encode(t, coder=coder, block_size=256, name="w")
    got = decode_cuda(enc, device=device).cpu()
    assert_same_bits(got, decode(enc), f"{dtype}/{coder}/{kind} vs CPU decode")
    assert_same_bits(got, t, f"{dtype}/{coder}/{kind} vs original")


def corrupted(what: str, enc):  # -> EncodedTensor with one targeted fault
    """A copy of ``enc`` with the fault ``what`` (see CORRUPTIONS) in its first fitting section."""
    import numpy as np

    from llmcomp_hf.codec import EncodedTensor
    from . import spec

    data, index, header = enc.data.copy(), enc.index.copy(), dict(enc.header)
    secs = [s for blk in spec.parse(header, enc.data, enc.index) for s in blk]
    coded = [s for s in secs if s.mode in (spec.HUFFMAN, spec.RANS)]
    sec = coded[0] if coded else secs[0]
    at = lambda name: sec.fields[name][0]  # noqa: E731
    if what == "stream_byte":
        data[at("stream1") + sec.fields["stream1"][1] // 2] ^= 0x5A
    elif what == "code_length":
        data[at("code_lengths")] = (data[at("code_lengths")] & 0xF0) | ((data[at("code_lengths")] & 0x0F) % 11 + 1)
    elif what == "stream_lengths":
        data[at("stream_lengths")] += 1
    elif what == "bitmap_one_symbol":
        data[at("bitmap") : at("bitmap") + 32] = 0
        data[at("bitmap")] = 1
    elif what == "section_length":
        data[at("length") : at("length") + 4] = np.frombuffer(np.uint32(1 << 30).tobytes(), np.uint8)
    elif what == "mode_byte":
        data[at("mode")] = 9
    elif what == "trailing_byte":
        end = int(index[1])
        data = np.concatenate([data[:end], np.zeros(1, np.uint8), data[end:]])
        index[1:] += 1
    elif what == "rans_frequency":
        data[at("freqs")] ^= 0x01
    elif what == "rans_state":
        data[at("states") : at("states") + 4] = np.frombuffer(np.uint32(0x10).tobytes(), np.uint8)
    elif what == "rans_word":
        data[at("words") + sec.fields["words"][1] // 2] ^= 0xA5
    elif what == "header_checksum":
        header["checksum"] = f"{int(header['checksum'], 16) ^ 1:016x}"
    else:
        raise ValueError(what)
    return EncodedTensor(header, data, index, name=enc.name)


def check_corruption(what: str, dtype: str, coder: str, device: str = "cuda") -> None:
    """CPU and GPU both reject the fault, with the same error class, block and plane."""
    import re

    from llmcomp_hf.codec import decode, encode
    from llmcomp_hf.codec.cuda import decode_cuda
    from llmcomp_hf.errors import CorruptStreamError
    from .helpers import tensor_of

    enc = encode(tensor_of(dtype, 549, "skewed", seed=7), coder=coder, block_size=256, name="layer.0.weight")
    bad = corrupted(what, enc)
    errors = []
    for fn in (lambda: decode(bad), lambda: decode_cuda(bad, device=device)):
        try:
            fn()
            errors.append(None)
        except CorruptStreamError as exc:
            errors.append(exc)
    cpu, gpu = errors
    assert cpu is not None, f"CPU decoder accepted fault {what}"
    assert gpu is not None, f"GPU decoder accepted fault {what} (CPU said: {cpu})"
    assert type(gpu) is type(cpu), f"GPU raised {type(gpu).__name__}: {gpu}; CPU {type(cpu).__name__}: {cpu}"
    loc = lambda e: [m.strip() for m in re.findall(r"block \d+, plane \d+: [a-z -]+", str(e))]  # noqa: E731
    assert loc(gpu) == loc(cpu), f"GPU: {gpu} / CPU: {cpu}"
    assert "layer.0.weight" in str(gpu), str(gpu)


def check_golden(name: str, device: str = "cuda") -> None:
    """The committed fixture ``name`` decodes on the device to its recorded original bytes."""
    import numpy as np

    from llmcomp_hf.codec import EncodedTensor
    from llmcomp_hf.codec.cuda import decode_cuda
    from .helpers import raw_bytes

    header = json.loads(_MANIFEST.read_text())[name]["header"]
    arrays = np.load(GOLDEN / "golden.npz")
    enc = EncodedTensor.from_parts(header, arrays[f"{name}.data"], arrays[f"{name}.index"], name=name)
    if header["coder"] in ("rans-ctx", "rans-scale"):  # modes 4, 5 have no CUDA decoder: refused (see extra-refuses_version_2)
        check_refusal(enc, device)
        return
    got = raw_bytes(decode_cuda(enc, device=device).cpu())
    assert np.array_equal(got, arrays[f"{name}.raw"]), f"golden {name} differs"


def check_refusal(enc, device: str = "cuda") -> None:
    """A stream that may hold mode 4 or 5 (coder rans-ctx from version 2, rans-scale) is refused by name,
    pointing at the CPU decoder."""
    from llmcomp_hf.codec.cuda import DeviceEncodedTensor, decode_cuda
    from llmcomp_hf.errors import FormatError

    for attempt in (lambda: decode_cuda(enc, device=device), lambda: DeviceEncodedTensor.from_encoded(enc, device)):
        try:
            attempt()
        except FormatError as exc:
            assert enc.name in str(exc) and "decode on the CPU" in str(exc) and repr(enc.header["coder"]) in str(exc), str(exc)
            continue
        raise AssertionError("the CUDA decoder accepted a stream with context (mode 4 or 5) sections")


def check_extra(name: str, device: str = "cuda") -> None:
    import torch

    from llmcomp_hf.codec import decode, encode
    from llmcomp_hf.codec.cuda import DeviceEncodedTensor, decode_cuda
    from llmcomp_hf.errors import CorruptStreamError
    from .helpers import assert_same_bits, tensor_of

    if name == "tiny_shapes":
        for dtype, shape in [("bfloat16", (1,)), ("int8", (3,)), ("int64", ()), ("float32", (0,)), ("float16", (0, 5)), ("bfloat16", (7, 45))]:
            t = tensor_of(dtype, int(torch.Size(shape).numel()), "skewed", seed=1, shape=shape)
            enc = encode(t, coder="huffman", block_size=256)
            assert_same_bits(decode_cuda(enc, device=device).cpu(), t, f"{dtype}{shape}")
    elif name == "device_resident_reuse":
        a = encode(tensor_of("bfloat16", 700, "specials", seed=2), coder="huffman", block_size=256)
        b = encode(tensor_of("float32", 300, "skewed", seed=3), coder="rans", block_size=256)
        da, db = DeviceEncodedTensor.from_encoded(a, device), DeviceEncodedTensor.from_encoded(b, device)
        scratch = torch.empty(max(da.scratch_nbytes, db.scratch_nbytes), dtype=torch.uint8, device=da.device)
        out = torch.empty(da.shape, dtype=da.dtype, device=da.device)
        for _ in range(2):  # first call verifies, the second runs without a host sync
            assert_same_bits(da.decode(out, scratch=scratch).cpu(), decode(a), "resident bf16")
            assert_same_bits(db.decode(scratch=scratch, verify=True).cpu(), decode(b), "resident fp32")
        db.check()
    elif name == "from_parts":  # arrays already on the device (a module's buffers), header as JSON
        enc = encode(tensor_of("float16", 600, "specials", seed=6), coder="rans", block_size=256)
        dev = DeviceEncodedTensor.from_encoded(enc, device).device
        data, index = torch.from_numpy(enc.data).to(dev), torch.from_numpy(enc.index).to(dev)
        d = DeviceEncodedTensor.from_parts(enc.header_json(), data, index, name="m.weight")
        assert_same_bits(d.decode().cpu(), decode(enc), "from_parts")
    elif name == "misaligned_out":
        a = encode(tensor_of("bfloat16", 301, "skewed", seed=4), coder="rans", block_size=256)
        buf = torch.zeros(302, dtype=torch.bfloat16, device=DeviceEncodedTensor.from_encoded(a, device).device)
        assert_same_bits(decode_cuda(a, out=buf[1:]).cpu(), decode(a), "misaligned out")
    elif name == "verify_false_still_checks":
        enc = encode(tensor_of("bfloat16", 549, "skewed", seed=5), coder="huffman", block_size=256, name="x")
        try:
            decode_cuda(corrupted("code_length", enc), device=device, verify=False)
        except CorruptStreamError:
            return
        raise AssertionError("verify=False decode accepted an invalid code table")
    elif name == "refuses_version_2":
        check_refusal(encode(tensor_of("bfloat16", 600, "skewed", seed=7), coder="rans-ctx", block_size=256, name="ctx.weight"), device)
    elif name == "refuses_rans_scale":  # a rans-scale header (version 4) may hold mode 5: no CUDA decoder yet
        from llmcomp_hf.codec import EncodedTensor

        enc = encode(tensor_of("bfloat16", 4096, "skewed", seed=8), coder="rans", block_size=1024)
        check_refusal(EncodedTensor(dict(enc.header, coder="rans-scale", version=4), enc.data, enc.index, "scale.weight"), device)
    else:
        raise ValueError(name)


def run_case(case: str, device: str = "cuda") -> None:
    kind, _, rest = case.partition("-")
    if kind == "roundtrip":
        d, c, k, n = rest.split("-")
        check_roundtrip(d, c, k, int(n), device)
    elif kind == "corrupt":
        w, d, c = rest.split("-")
        check_corruption(w, d, c, device)
    elif kind == "golden":
        check_golden(rest, device)
    else:
        check_extra(rest, device)


def _run_all() -> None:
    import time
    import traceback
    import warnings

    warnings.simplefilter("ignore")
    for case in CASES:
        t0 = time.perf_counter()
        try:
            run_case(case)
            result = "ok"
        except Exception as exc:  # report every failure, keep going
            result = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
        print(json.dumps({case: result}), flush=True)
        print(f"{case}: {time.perf_counter() - t0:.2f}s", file=sys.stderr, flush=True)


def _compile_ptx() -> None:
    """Compile every kernel for sm_90 without a GPU (libNVVM only)."""
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba.cuda import types as T

    class _H200:  # device functions ask the current device for its compute capability
        compute_capability = (9, 0)

    dispatcher.get_current_device = lambda: _H200()
    from llmcomp_hf.codec import cuda_huffman as H
    from llmcomp_hf.codec import cuda_kernels as K
    from llmcomp_hf.codec import cuda_merge as M
    from llmcomp_hf.codec import cuda_rans as R

    a = lambda t: T.Array(t, 1, "C")  # noqa: E731
    i64, ai64, u32, u64 = T.int64, a(T.int64), a(T.uint32), a(T.uint64)
    entropy = (u32, ai64, ai64, ai64, ai64, i64, i64, i64, u64, ai64)
    kernels = {
        K.parse_sections: (u32, ai64, i64, i64, i64, ai64, ai64, ai64, ai64),
        H.huffman_decode: entropy,
        R.rans_decode: entropy,
        M.merge_planes: (u32, ai64, ai64, ai64, u64, i64, i64, i64, i64, i64, i64, u32, i64, a(T.uint8), u64, i64),
    }
    for kernel, sig in kernels.items():
        try:
            cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        except Exception as exc:  # a missing CUDA compiler library is a skip; anything else a failure
            text = f"{type(exc).__name__} {exc}".lower()
            if "nvvm" in text or "nvrtc" in text or "dynamiclibnotfound" in text:
                print("NVVM-MISSING", exc)
                return
            raise
    print("PTX-OK")


if __name__ == "__main__":  # re-import as tests.codec.test_cuda_sim so relative imports work
    sys.path.insert(0, str(ROOT))
    import tests.codec.test_cuda_sim as _self

    _self._compile_ptx() if "--ptx" in sys.argv else _self._run_all()
