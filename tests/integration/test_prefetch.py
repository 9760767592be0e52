"""The background decoder of compressed checkpoints: same bits, bounded memory, never in the way."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import llmcomp_hf
from llmcomp_hf import _prefetch
from llmcomp_hf.format.reader import decode_parts
from llmcomp_hf.format.shard import PARTS, part_key

from .helpers import assert_same_state, raw_bits, shard_files, tiny_model


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch")
    tiny_model("llama", torch.bfloat16).save_pretrained(root / "dense")
    model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    model.save_pretrained(root / "packed", max_shard_size="200KB")
    return root


def _weights(folder):
    out = []
    for file in shard_files(folder):
        with safe_open(file, "pt") as f:
            out += [(k.removesuffix(".llmcomp_header"), str(file)) for k in f.keys() if k.endswith(".llmcomp_header")]
    return out


def _parts(name, file):
    with safe_open(file, "pt") as f:
        return {p: f.get_tensor(part_key(name, p)) for p in PARTS}


def _wait_done(pre, count, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with pre._cond:
            if sum(job.state == _prefetch._DONE for job in pre._jobs) >= count:
                return
        time.sleep(0.01)
    raise AssertionError("prefetch did not progress")


def test_load_with_and_without_prefetch_is_bit_identical(packed, monkeypatch):
    dense = AutoModelForCausalLM.from_pretrained(packed / "dense").state_dict()
    with_prefetch = AutoModelForCausalLM.from_pretrained(packed / "packed")
    assert with_prefetch.hf_quantizer.prefetch is None  # closed after loading
    monkeypatch.setenv("LLMCOMP_PREFETCH", "0")
    without = AutoModelForCausalLM.from_pretrained(packed / "packed")
    assert_same_state(with_prefetch.state_dict(), dense)
    assert_same_state(without.state_dict(), dense)


def test_take_hands_out_each_decoded_weight_once_in_loader_order(packed):
    weights = _weights(packed / "packed")
    pre = _prefetch.Prefetcher(weights).start()
    try:
        from transformers.core_model_loading import dot_natural_key

        assert [job.name for job in pre._jobs] == sorted((n for n, _ in weights), key=dot_natural_key)
        _wait_done(pre, len(weights))
        for name, file in weights:
            parts = _parts(name, file)
            got = pre.take(parts["header"])
            assert got is not None and torch.equal(raw_bits(got), raw_bits(decode_parts(name, parts, file)))
            assert pre.take(parts["header"]) is None  # once only
        assert pre._ahead == 0
    finally:
        pre.close()


def test_a_weight_not_started_is_left_to_the_caller(packed):
    weights = _weights(packed / "packed")
    pre = _prefetch.Prefetcher(weights)  # not started: every weight is pending
    last = pre._jobs[-1]
    assert pre.take(_parts(last.name, last.file)["header"]) is None
    assert last.state == _prefetch._TAKEN
    pre.start()
    _wait_done(pre, len(weights) - 1)
    assert last.result is None and last.state == _prefetch._TAKEN  # skipped by the background thread
    pre.close()


def test_memory_ahead_is_bounded_and_an_idle_prefetch_stops(packed, monkeypatch):
    monkeypatch.setattr(_prefetch, "IDLE_TIMEOUT_S", 0.3)
    weights = _weights(packed / "packed")
    pre = _prefetch.Prefetcher(weights, max_ahead=1).start()  # one decoded weight at a time
    _wait_done(pre, 1)
    time.sleep(0.1)
    assert sum(job.state == _prefetch._DONE for job in pre._jobs) == 1
    pre._thread.join(timeout=5)  # nobody takes: it gives up and drops what it held
    assert not pre._thread.is_alive() and pre._closed
    assert all(job.result is None for job in pre._jobs)
    first = pre._jobs[0]
    assert pre.take(_parts(first.name, first.file)["header"]) is None


def test_a_corrupted_weight_is_reported_by_the_loader_not_hidden(packed, tmp_path):
    import shutil

    from llmcomp_hf.errors import LlmcompError

    folder = shutil.copytree(packed / "packed", tmp_path / "bad")
    name, file = _weights(folder)[0]
    file = folder / file.split("/")[-1]
    from .helpers import rewrite_shard

    def flip(tensors, metadata):
        data = tensors[part_key(name, "data")].clone()
        data[len(data) // 2] ^= 0xFF
        tensors[part_key(name, "data")] = data

    rewrite_shard(file, flip)
    with pytest.raises(LlmcompError, match=name.split(".")[-2]):
        AutoModelForCausalLM.from_pretrained(folder)


def test_no_prefetch_when_offloading_to_disk(packed, tmp_path):
    from llmcomp_hf.quantizer import LlmcompHfQuantizer

    quantizer = LlmcompHfQuantizer(llmcomp_hf.LosslessConfig())
    quantizer._files = dict(_weights(packed / "packed"))
    quantizer._start_prefetch(set(), {"model.layers.0": "disk", "": "cpu"})
    assert quantizer.prefetch is None
    quantizer._start_prefetch(set(), {"": "cpu"})
    assert quantizer.prefetch is not None
    quantizer._stop_prefetch()
