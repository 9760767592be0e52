"""The background decoder of compressed checkpoints: same bits, bounded memory, never in the way."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import llmcomp_hf
from llmcomp_hf import _prefetch
from llmcomp_hf.codec import jobs as J
from llmcomp_hf.errors import LlmcompError
from llmcomp_hf.format.reader import decode_parts
from llmcomp_hf.format.shard import PARTS, part_key

from .helpers import assert_same_state, raw_bits, rewrite_shard, shard_files, tiny_model


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch")
    tiny_model("llama", torch.bfloat16).save_pretrained(root / "dense")
    model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    model.save_pretrained(root / "packed", max_shard_size="200KB")
    return root


def _part_files(folder):
    out = {}
    for file in shard_files(folder):
        with safe_open(file, "pt") as f:
            out.update({k: str(file) for k in f.keys() if k.endswith((".llmcomp_header", ".llmcomp_data", ".llmcomp_index"))})
    return out


def _weights(folder):
    parts = _part_files(folder)
    return [(k.removesuffix(".llmcomp_header"), f) for k, f in parts.items() if k.endswith(".llmcomp_header")]


def _prefetcher(folder, **kwargs):
    return _prefetch.Prefetcher(_weights(folder), part_files=_part_files(folder), **kwargs)


def _parts(folder, name):
    files = _part_files(folder)
    out = {}
    for p in PARTS:
        with safe_open(files[part_key(name, p)], "pt") as f:
            out[p] = f.get_tensor(part_key(name, p))
    return out


def _wait(pre, done, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if int((pre._state == J.DONE).sum()) >= done:
            return
        time.sleep(0.01)
    raise AssertionError(f"prefetch did not progress: states {list(pre._state)}")


def test_load_with_and_without_prefetch_is_bit_identical(packed, monkeypatch):
    dense = AutoModelForCausalLM.from_pretrained(packed / "dense").state_dict()
    with_prefetch, info = AutoModelForCausalLM.from_pretrained(packed / "packed", output_loading_info=True)
    assert with_prefetch.hf_quantizer.prefetch is None  # closed after loading
    assert not any(info.values()), info  # headers-only loading leaves no unexpected or missing keys
    ignored = with_prefetch._keys_to_ignore_on_load_unexpected or ()
    assert not any("llmcomp" in pattern for pattern in ignored)  # the model's own patterns are back
    monkeypatch.setenv("LLMCOMP_PREFETCH", "0")
    without, info = AutoModelForCausalLM.from_pretrained(packed / "packed", output_loading_info=True)
    assert not any(info.values()), info
    assert_same_state(with_prefetch.state_dict(), dense)
    assert_same_state(without.state_dict(), dense)


def test_the_prefetcher_starts_before_the_model_is_built_and_serves_the_whole_load(packed, monkeypatch):
    made = _count_prefetchers(monkeypatch)
    from transformers.core_model_loading import WeightConverter

    materialised = []
    real_convert = WeightConverter.convert

    def convert(self, layer_name, **kwargs):  # which stored parts reach the loader's converters
        materialised.extend(key for key in self.collected_tensors)
        return real_convert(self, layer_name, **kwargs)

    monkeypatch.setattr(WeightConverter, "convert", convert)
    model = AutoModelForCausalLM.from_pretrained(packed / "packed")
    assert len(made) == 1, "one prefetcher, started from the config (before the model was built)"
    assert (made[0]._state == J.DONE).all() and all(job.taken for job in made[0]._jobs)
    assert materialised and not any(key.endswith(("llmcomp_data", "llmcomp_index")) for key in materialised)
    assert_same_state(model.state_dict(), AutoModelForCausalLM.from_pretrained(packed / "dense").state_dict())


def test_parts_of_one_weight_in_different_shards(packed, tmp_path):
    """transformers may split a weight's parts over shards: the prefetcher and the fallback find them."""
    folder = shutil.copytree(packed / "packed", tmp_path / "split")
    files = shard_files(folder)
    name = _weights(folder)[0][0]
    moved = part_key(name, "data")
    source = next(f for f in files if moved in _part_files(folder) and str(f) == _part_files(folder)[moved])
    target = next(f for f in files if f != source)
    with safe_open(str(source), "pt") as handle:
        tensor = handle.get_tensor(moved)
    rewrite_shard(source, lambda tensors, metadata: tensors.pop(moved))
    rewrite_shard(target, lambda tensors, metadata: tensors.__setitem__(moved, tensor))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"][moved] = target.name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    dense = AutoModelForCausalLM.from_pretrained(packed / "dense").state_dict()
    pre = _prefetcher(folder).start()
    _wait(pre, len(pre._jobs))
    pre.close()
    assert_same_state(AutoModelForCausalLM.from_pretrained(folder).state_dict(), dense)


def test_take_hands_out_each_decoded_weight_once_in_loader_order(packed):
    folder = packed / "packed"
    weights = _weights(folder)
    pre = _prefetcher(folder).start()
    try:
        from transformers.core_model_loading import dot_natural_key

        assert [job.name for job in pre._jobs] == sorted((n for n, _ in weights), key=dot_natural_key)
        _wait(pre, len(weights))
        for name, file in weights:
            parts = _parts(folder, name)
            got = pre.take(parts["header"])
            assert got is not None and torch.equal(raw_bits(got), raw_bits(decode_parts(name, parts, file)))
            assert pre.take(parts["header"]) is None  # once only
            assert pre.source(parts["header"]) == name
        assert pre._ahead == 0
    finally:
        pre.close()


def test_a_weight_not_started_is_left_to_the_caller(packed):
    folder = packed / "packed"
    pre = _prefetcher(folder)  # not started: every weight is pending
    last = pre._jobs[-1]
    assert pre.take(_parts(folder, last.name)["header"]) is None
    assert pre._state[last.i] == J.CLAIMED and last.out is None
    pre.start()
    _wait(pre, len(pre._jobs) - 1)
    pre._thread.join(timeout=10)
    assert pre._state[last.i] == J.CLAIMED  # skipped by the background kernel
    pre.close()


def test_a_loader_waiting_for_a_weight_decodes_others_from_the_end(packed):
    folder = packed / "packed"
    pre = _prefetcher(folder)  # not started
    first = pre._jobs[0]
    pre._state[first.i] = J.RUNNING  # as if the background kernel were decoding it
    assert pre._steal(first)
    lo, hi = first.batch
    assert all(pre._state[i] == J.DONE for i in range(lo + 1, hi))
    assert not pre._steal(first)  # nothing left to do
    for job in pre._jobs[1:hi]:
        parts = _parts(folder, job.name)
        got = pre.take(parts["header"])
        assert got is not None and torch.equal(raw_bits(got), raw_bits(decode_parts(job.name, parts)))
    pre._state[first.i] = J.PENDING
    assert pre.take(_parts(folder, first.name)["header"]) is None  # pending: the caller decodes it
    pre.close()


def test_memory_ahead_is_bounded_and_an_idle_prefetch_stops(packed, monkeypatch):
    monkeypatch.setattr(_prefetch, "IDLE_TIMEOUT_S", 0.3)
    folder = packed / "packed"
    pre = _prefetcher(folder, max_ahead=1).start()  # one decoded weight at a time
    _wait(pre, 1)
    time.sleep(0.1)
    assert int((pre._state == J.DONE).sum()) == 1 and len(pre._batches) == len(pre._jobs)
    pre._thread.join(timeout=5)  # nobody takes: it gives up and drops what it held
    assert not pre._thread.is_alive() and pre._closed
    assert all(job.out is None for job in pre._jobs) and pre._ahead == 0
    first = pre._jobs[0]
    assert pre.take(_parts(folder, first.name)["header"]) is None


@pytest.mark.parametrize("damage", ["data", "index"])
def test_a_corrupted_weight_is_reported_by_the_loader_not_hidden(packed, tmp_path, damage):
    folder = shutil.copytree(packed / "packed", tmp_path / "bad")
    name = _weights(folder)[0][0]
    key = part_key(name, damage)
    file = _part_files(folder)[key]

    def flip(tensors, metadata):
        part = tensors[key].clone()
        if damage == "data":
            part[len(part) // 2] ^= 0xFF
        else:
            part[-1] += 3  # the index no longer covers the data
        tensors[key] = part

    rewrite_shard(file, flip)
    pre = _prefetcher(folder).start()
    _wait(pre, len(pre._jobs) - 1)
    pre._thread.join(timeout=10)
    assert pre.take(_parts(folder, name)["header"]) is None  # failed or wrong checksum: not handed out
    pre.close()
    with pytest.raises(LlmcompError, match=name.split(".")[-2]):
        AutoModelForCausalLM.from_pretrained(folder)


def test_no_prefetch_when_offloading_to_disk(packed, tmp_path):
    from llmcomp_hf.format.inventory import Inventory
    from llmcomp_hf.quantizer import LlmcompHfQuantizer

    quantizer = LlmcompHfQuantizer(llmcomp_hf.LosslessConfig())
    quantizer.inventory = Inventory(bases=dict(_weights(packed / "packed")), part_files=_part_files(packed / "packed"))
    quantizer._start_prefetch(set(), {"model.layers.0": "disk", "": "cpu"})
    assert quantizer.prefetch is None
    quantizer._start_prefetch(set(), {"": "cpu"})
    assert quantizer.prefetch is not None
    quantizer._stop_prefetch()


def _count_prefetchers(monkeypatch) -> list:
    made = []
    real = _prefetch.Prefetcher

    class Spy(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_prefetch, "Prefetcher", Spy)
    return made


def test_early_guess_of_other_files_is_replaced(tmp_path, monkeypatch):
    """The early start reads the folder's default shards; a `variant=` load reads others: the
    prefetcher is replaced, and weights of the other files are never handed out."""
    config = llmcomp_hf.LosslessConfig(min_numel=0)
    for seed, variant in ((0, "v2"), (1, None)):
        tiny_model("llama", torch.bfloat16, seed=seed).save_pretrained(tmp_path / f"dense{seed}")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"dense{seed}", quantization_config=config)
        model.save_pretrained(tmp_path / "both", variant=variant)
    made = _count_prefetchers(monkeypatch)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "both", variant="v2")
    assert len(made) == 2 and made[0]._closed  # the early guess (model.safetensors), then the real one
    assert (made[1]._state == J.DONE).all(), "every weight decoded in the background"
    assert_same_state(loaded.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "dense0").state_dict())


def test_subfolder_load_starts_the_prefetcher_once_the_files_are_known(packed, tmp_path, monkeypatch):
    shutil.copytree(packed / "packed", tmp_path / "repo" / "sub")
    made = _count_prefetchers(monkeypatch)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "repo", subfolder="sub")
    assert len(made) == 1 and all(job.taken for job in made[0]._jobs)
    assert (made[0]._state == J.DONE).all(), "every weight decoded in the background"
    assert_same_state(loaded.state_dict(), AutoModelForCausalLM.from_pretrained(packed / "dense").state_dict())


def test_per_expert_weights_through_the_models_own_merge_converter(tmp_path, monkeypatch):
    """Mixtral checkpoints store one weight per expert, which transformers merges on load: each
    expert's header reaches DecodeOp before the merge, with and without the prefetcher."""
    import transformers as tf

    from llmcomp_hf.stream.compress import compress_checkpoint

    from .helpers import TINY

    torch.manual_seed(0)
    cfg = tf.MixtralConfig(**TINY, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    tf.MixtralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "dense")
    compress_checkpoint(tmp_path / "dense", tmp_path / "packed", llmcomp_hf.LosslessConfig(min_numel=0))
    assert any(key.endswith("experts.3.w2.weight.llmcomp_header") for key in _part_files(tmp_path / "packed"))
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").state_dict()
    made = _count_prefetchers(monkeypatch)
    assert_same_state(AutoModelForCausalLM.from_pretrained(tmp_path / "packed").state_dict(), dense)
    assert len(made) == 1 and all(job.taken for job in made[0]._jobs) and (made[0]._state == J.DONE).all()
    monkeypatch.setenv("LLMCOMP_PREFETCH", "0")
    assert_same_state(AutoModelForCausalLM.from_pretrained(tmp_path / "packed").state_dict(), dense)


def test_hub_repo_in_the_local_cache_is_prefetched_from_the_config(packed, tmp_path, monkeypatch):
    """``from_pretrained("org/name")`` of a cached repo: the snapshot is found offline before the
    model is built (the network is never asked: local_files_only on both sides)."""
    from huggingface_hub import constants

    from tests.cli.helpers import hub_cache

    cache = tmp_path / "hub"
    hub_cache(cache, "tiny-org/packed", packed / "packed")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    made = _count_prefetchers(monkeypatch)
    from llmcomp_hf.quantizer import LlmcompHfQuantizer

    early = []
    real_start = LlmcompHfQuantizer._start_prefetch

    def start(self, *args):
        early.append(self.prefetch is not None)  # already running when the files became known
        return real_start(self, *args)

    monkeypatch.setattr(LlmcompHfQuantizer, "_start_prefetch", start)
    loaded = AutoModelForCausalLM.from_pretrained("tiny-org/packed", cache_dir=cache, local_files_only=True)
    assert early == [True] and len(made) == 1 and (made[0]._state == J.DONE).all()
    assert all(str(cache) in file for file in made[0].weights.values())
    assert_same_state(loaded.state_dict(), AutoModelForCausalLM.from_pretrained(packed / "dense").state_dict())


def test_a_weight_declaring_far_more_than_it_stores_is_left_to_the_loader(tmp_path, monkeypatch):
    """Issue 8: ~1 KB of const blocks declaring 2 GiB is not allocated ahead; the loader, which knows
    the parameter's shape, decides (check_declared) and decodes it itself."""
    import numpy as np
    from safetensors.torch import save_file

    from llmcomp_hf.codec import EncodedTensor, encode, memory
    from llmcomp_hf.format import pack

    n_blocks = 128
    bomb = EncodedTensor.from_parts(
        {"format": "llmcomp.tensor", "version": 1, "dtype": "int8", "shape": [n_blocks << 24], "coder": "raw",
         "block_size": 1 << 24, "checksum": "0" * 16},
        np.tile(np.array([1, 0], np.uint8), n_blocks), np.arange(n_blocks + 1, dtype=np.int64) * 2, name="bomb.weight")
    ok = encode(torch.randn(64, 64).to(torch.bfloat16), name="ok.weight")
    file = tmp_path / "model.safetensors"
    save_file({**pack("bomb.weight", bomb), **pack("ok.weight", ok)}, str(file))
    real = memory.empty

    def guarded(shape, dtype):
        assert int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size() < 1 << 30, "bomb allocated ahead"
        return real(shape, dtype)

    monkeypatch.setattr(memory, "empty", guarded)
    pre = _prefetch.Prefetcher([("bomb.weight", str(file)), ("ok.weight", str(file))]).start()
    try:
        _wait(pre, 1)  # ok.weight decoded ahead (a job not started yet would be left to the caller)
        with safe_open(str(file), "pt") as f:
            assert pre.take(f.get_tensor("bomb.weight.llmcomp_header")) is None
            got = pre.take(f.get_tensor("ok.weight.llmcomp_header"))
        packed_ok = pack("ok.weight", ok)
        want = decode_parts("ok.weight", {p: packed_ok[part_key("ok.weight", p)] for p in PARTS})
        assert got is not None and torch.equal(raw_bits(got), raw_bits(want))
    finally:
        pre.close()
