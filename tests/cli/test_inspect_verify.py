"""`llmcomp inspect` and `llmcomp verify`: figures, entropy bounds, and corruption named by tensor and file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llmcomp_hf.stream.check import order0_bits
from tests.cli.helpers import run_cli, tiny_checkpoint
from tests.integration.helpers import rewrite_shard


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("iv")
    src = tiny_checkpoint(root / "src")
    from llmcomp_hf.cli import main

    assert main(["compress", str(src), str(root / "c"), "-q", "--workers", "1"]) == 0
    return root / "c"


@pytest.fixture
def broken(folder, tmp_path):
    """A fresh copy of the compressed checkpoint to damage, and the shard holding q_proj of layer 1."""
    copy = shutil.copytree(folder, tmp_path / "c")
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.q_proj.weight"
    return copy, name, copy / index["weight_map"][f"{name}.llmcomp_data"]


def test_inspect_json_figures(folder, capsys):
    rc, out, _ = run_cli(capsys, "inspect", folder, "--json", "--workers", "2")
    assert rc == 0
    report = json.loads(out)
    rows = {r["name"]: r for r in report["tensors"]}
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert (q["dtype"], q["shape"], q["compressed"], q["coder"]) == ("bfloat16", [64, 64], True, "huffman")
    assert q["stages"] == []
    assert q["original_bytes"] == 64 * 64 * 2 and 0.5 < q["ratio"] < 0.9
    assert q["bits_per_weight"] == pytest.approx(8 * q["stored_bytes"] / 4096)
    # the per-tensor order-0 bound: ~2.6 exponent bits + ~8 sign/mantissa bits for bf16 weights
    assert 9.0 < q["bound_bits"] < q["bits_per_weight"] + 0.5
    norm = rows["model.norm.weight"]
    assert not norm["compressed"] and norm["ratio"] == 1.0 and norm["bound_bits"] is None
    totals = report["totals"]
    assert totals["tensors"] == len(rows)
    assert totals["compressed_tensors"] == sum(r["compressed"] for r in rows.values())
    assert totals["stored_bytes"] == sum(r["stored_bytes"] for r in rows.values())
    assert report["quantization_config"]["quant_method"] == "llmcomp"


def test_inspect_table_and_headers_only(folder, capsys):
    rc, out, _ = run_cli(capsys, "inspect", folder, "--no-bound")
    assert rc == 0 and "model.layers.0.mlp.up_proj.weight" in out and "llmcomp/huffman" in out and "ratio" in out
    assert "order-0 bound" not in out


def test_order0_bits_matches_a_direct_count():
    w = (torch.randn(10000) * 0.02).to(torch.bfloat16)
    bits = w.view(torch.int16).numpy().view(np.uint16)
    expected = 0.0
    for plane in ((bits >> 7) & 0xFF, ((bits >> 8) & 0x80) | (bits & 0x7F)):
        p = np.unique(plane, return_counts=True)[1] / plane.size
        expected -= (p * np.log2(p)).sum()
    assert order0_bits(w) == pytest.approx(expected)
    assert order0_bits(torch.zeros(100, dtype=torch.int32)) == 0.0


def test_verify_ok(folder, capsys):
    rc, out, _ = run_cli(capsys, "verify", folder, "-q")
    assert rc == 0 and out.startswith("ok:")


def _flip_byte(name, at):
    def edit(tensors, metadata):
        data = tensors[f"{name}.llmcomp_data"].clone()
        data[at] ^= 0x55
        tensors[f"{name}.llmcomp_data"] = data
    return edit


@pytest.mark.parametrize("where", ["payload", "end"])
def test_verify_names_the_corrupted_tensor_and_file(broken, capsys, where):
    copy, name, shard = broken
    with safe_open(str(shard), framework="pt") as h:
        size = h.get_slice(f"{name}.llmcomp_data").get_shape()[0]
    rewrite_shard(shard, _flip_byte(name, size // 2 if where == "payload" else size - 1))
    rc, _, err = run_cli(capsys, "verify", copy, "-q")
    assert rc == 1
    assert name in err and shard.name in err


def test_verify_catches_a_truncated_shard(broken, capsys):
    copy, _, shard = broken
    shard.write_bytes(shard.read_bytes()[:-100])
    rc, _, err = run_cli(capsys, "verify", copy, "-q")
    assert rc == 1 and shard.name in err


def test_verify_catches_index_damage(broken, capsys):
    copy, name, _ = broken
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.norm.weight"]
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, _, err = run_cli(capsys, "verify", copy, "-q")
    assert rc == 1 and "model.norm.weight" in err
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00099.safetensors"
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, _, err = run_cli(capsys, "verify", copy, "-q")
    assert rc == 1 and "model-00001-of-00099" in err  # names a shard that does not exist


def test_verify_catches_a_config_without_quantization_config(broken, capsys):
    copy, _, _ = broken
    cfg = json.loads((copy / "config.json").read_text())
    del cfg["quantization_config"]
    (copy / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(capsys, "verify", copy, "-q")
    assert rc == 1 and "quantization_config" in err


def test_decompress_of_a_corrupted_checkpoint_fails_cleanly(broken, tmp_path, capsys):
    copy, name, shard = broken
    rewrite_shard(shard, _flip_byte(name, 100))
    rc, _, err = run_cli(capsys, "decompress", copy, tmp_path / "plain", "-q")
    assert rc == 1 and name in err
    assert not (tmp_path / "plain").exists()


def test_compress_writes_plain_checksums_and_verify_checks_them(folder, broken, capsys):
    """Issue 8: a flipped byte in a norm (a plain tensor) used to pass verify."""
    from llmcomp_hf.format import PLAIN_PREFIX
    from llmcomp_hf.stream.check import verify_checkpoint

    copy, _, _ = broken
    shard = next(f for f in sorted(copy.glob("*.safetensors"))
                 if "model.norm.weight" in safe_open(str(f), framework="pt").keys())
    with safe_open(str(shard), framework="pt") as h:
        meta = h.metadata()
        plain = [k for k in h.keys() if not k.rsplit(".", 1)[-1].startswith("llmcomp_")]
    assert plain and all(PLAIN_PREFIX + k in meta for k in plain)
    report = verify_checkpoint(folder)
    assert report.error is None and report.plain_verified >= len(plain)

    def flip(tensors, metadata):
        t = tensors["model.norm.weight"].clone()
        t.view(torch.uint8)[3] ^= 0x04
        tensors["model.norm.weight"] = t

    rewrite_shard(shard, flip)
    rc, _, err = run_cli(capsys, "verify", copy, "-q")
    assert rc == 1 and "model.norm.weight" in err and shard.name in err
