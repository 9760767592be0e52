"""The one coder registry (llmcomp_hf.coders) is what every consumer reads: config, codec API,
kernels, container validation, reference encoder and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llmcomp_hf import coders
from llmcomp_hf.codec import api, blocks, encoded
from llmcomp_hf.codec.reference import encode_reference


def test_every_consumer_reads_the_registry() -> None:
    from llmcomp_hf import config
    from llmcomp_hf.cli import build_parser

    names = set(coders.NAMES)
    assert set(encoded.CODERS) == names == set(api.DEFAULT_MIN_GAIN) == set(blocks.CODER_IDS)
    assert set(config.CODERS) == set(coders.CHECKPOINT_CODERS) == names - {"raw"}
    for name, c in coders.CODERS.items():
        assert api.DEFAULT_MIN_GAIN[name] == c.min_gain and blocks.CODER_IDS[name] == c.mode
        assert encoded.format_version(name) == c.version and encoded.min_version(name) == c.min_version
    parser = build_parser()
    for name in coders.CHECKPOINT_CODERS:  # `llmcomp compress --coder` takes every documented coder
        args = parser.parse_args(["compress", "src", "dst", "--coder", name])
        assert args.coder == name


@pytest.mark.parametrize("name", coders.NAMES)
def test_every_coder_encodes_and_validates(name: str) -> None:
    t = torch.randn(40, 64).to(torch.bfloat16)
    enc = api.encode(t, coder=name, block_size=1024)
    enc.validate()
    assert torch.equal(api.decode(enc).view(torch.int16), t.view(torch.int16))
    ref = encode_reference(t, coder=name, block_size=1024)
    assert ref.header == enc.header


def test_unknown_coder_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="rans-scale"):
        api.encode(torch.zeros(8), coder="zstd")
    with pytest.raises(ValueError, match="rans-scale"):
        coders.coder("RANS")


def test_registry_import_is_light() -> None:
    """The CLI reads the registry for --help without importing torch or numba."""
    code = "import sys, llmcomp_hf.coders; assert 'torch' not in sys.modules and 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
