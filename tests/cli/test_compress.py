"""`llmcomp compress` / `decompress`: sharded tiny models, bit-exact, loadable, atomic, SRC untouched."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from llmcomp_hf._guard import GUARD_KEY
from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.format.shard import PLAIN_PREFIX, SHARD_METADATA, plain_checksum
from llmcomp_hf.stream.compress import is_selected
from llmcomp_hf.stream.source import TensorInfo
from tests.cli.helpers import (
    assert_same_state,
    run_cli,
    state,
    tiny_checkpoint,
    tree_digest,
)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("src") / "tiny")


@pytest.fixture(scope="module")
def compressed(src, tmp_path_factory):
    """(SRC digest before, DST folder) of `llmcomp compress --verify --workers 2`."""
    before = tree_digest(src)
    dst = tmp_path_factory.mktemp("dst") / "tiny-llmcomp"
    from llmcomp_hf.cli import main

    assert main(["compress", str(src), str(dst), "--verify", "--workers", "2", "-q"]) == 0
    return before, dst


def test_source_is_never_modified(src, compressed):
    before, _ = compressed
    assert tree_digest(src) == before


def test_output_layout_mirrors_the_source(src, compressed):
    _, dst = compressed
    src_index = json.loads((src / "model.safetensors.index.json").read_text())
    dst_index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert sorted(set(src_index["weight_map"].values())) == sorted(set(dst_index["weight_map"].values()))
    assert len(set(dst_index["weight_map"].values())) > 2  # really sharded
    decoded_names = {k.rsplit(".llmcomp_", 1)[0] for k in dst_index["weight_map"]}
    assert decoded_names == set(src_index["weight_map"])
    assert any(k.endswith(".llmcomp_data") for k in dst_index["weight_map"])
    for shard in set(dst_index["weight_map"].values()):
        with safe_open(str(dst / shard), framework="pt") as h:
            plain = {PLAIN_PREFIX + k: plain_checksum(h.get_tensor(k)) for k in h.keys() if ".llmcomp_" not in k}
            assert h.metadata() == {"format": "pt", **SHARD_METADATA, **plain}
            assert set(h.keys()) == {k for k, v in dst_index["weight_map"].items() if v == shard}
    assert (dst / "tokenizer_config.json").is_file() and (dst / "generation_config.json").is_file()
    assert not list(dst.parent.glob(".*partial*"))


def test_config_gets_quantization_config_and_guard(src, compressed):
    _, dst = compressed
    before = json.loads((src / "config.json").read_text())
    after = json.loads((dst / "config.json").read_text())
    assert after["quantization_config"] == LosslessConfig().to_dict()
    assert after["fusion_config"] == {GUARD_KEY: False}
    assert {k: v for k, v in after.items() if k not in ("quantization_config", "fusion_config")} == before


def test_tensors_are_bit_identical_and_transformers_loads_them(src, compressed):
    _, dst = compressed
    assert_same_state(state(src), state(dst))
    dense = AutoModelForCausalLM.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert isinstance(model.config.quantization_config, LosslessConfig)
    assert_same_state(dense.state_dict(), model.state_dict())


def test_card_is_written(compressed):
    from huggingface_hub import ModelCard

    _, dst = compressed
    card = ModelCard((dst / "README.md").read_text())
    assert card.data.tags == ["llmcomp", "lossless"] and card.data.license == "mit"
    assert card.data.to_dict()["llmcomp"]["compressed_tensors"] > 0


def test_decompress_restores_a_plain_checkpoint(src, compressed, tmp_path, capsys):
    _, dst = compressed
    out = tmp_path / "plain"
    rc, stdout, _ = run_cli(capsys, "decompress", dst, out, "-q", "--workers", "2")
    assert rc == 0 and "decompressed" in stdout
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    src_index = json.loads((src / "model.safetensors.index.json").read_text())
    out_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == src_index["weight_map"]
    assert out_index["metadata"]["total_size"] == src_index["metadata"]["total_size"]
    for shard in set(out_index["weight_map"].values()):  # no llmcomp keys or metadata left
        with safe_open(str(out / shard), framework="pt") as h:
            assert h.metadata() == {"format": "pt"}
    assert_same_state(state(src), state(out))
    assert not (out / "README.md").exists()  # the llmcomp card does not describe a plain model


def test_existing_destination_is_a_usage_error(src, compressed, capsys):
    _, dst = compressed
    before = tree_digest(dst)
    rc, _, err = run_cli(capsys, "compress", src, dst, "-q")
    assert rc == 2 and "--overwrite" in err
    assert tree_digest(dst) == before


@pytest.mark.parametrize("case", ["inside-source", "already-compressed", "missing", "bad-config", "bad-workers"])
def test_usage_errors(case, src, compressed, tmp_path, capsys):
    _, dst = compressed
    args = {
        "inside-source": [src, src / "sub"],
        "already-compressed": [dst, tmp_path / "again"],
        "missing": [tmp_path / "nothing", tmp_path / "x"],
        "bad-config": [src, tmp_path / "x", "--block-size", "100"],
        "bad-workers": [src, tmp_path / "x", "--workers", "0"],
    }[case]
    rc, _, err = run_cli(capsys, "compress", *args, "-q")
    assert rc == 2, err
    assert err.startswith("llmcomp: error:")
    assert not (tmp_path / "x").exists() and not (src / "sub").exists()


def test_failure_midway_leaves_no_destination(src, tmp_path, capsys, monkeypatch):
    import llmcomp_hf.codec as codec

    real, calls = codec.encode, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(codec, "encode", flaky)
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "out", "-q")
    assert rc == 3 and "No space left" in err
    assert list(tmp_path.iterdir()) == []  # no DST, no partial folder

    # with --overwrite, a failing run keeps the previous DST as it was
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    calls.clear()
    rc, _, _ = run_cli(capsys, "compress", src, tmp_path / "out", "-q", "--overwrite")
    assert rc == 3 and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_overwrite_replaces_atomically(src, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    rc, _, _ = run_cli(capsys, "compress", src, tmp_path / "out", "-q", "--overwrite", "--workers", "1")
    assert rc == 0 and not (tmp_path / "out" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_config_file_and_presets(src, tmp_path, capsys):
    from llmcomp_hf.presets import preset_names

    (tmp_path / "c.yaml").write_text(
        "quantization_config:\n  coder: rans\n  min_numel: 8192\n  modules_to_not_convert: [lm_head]\n"
    )
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "a", "--config", tmp_path / "c.yaml", "-q")
    assert rc == 0, err
    qc = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    assert (qc["coder"], qc["min_numel"], qc["modules_to_not_convert"]) == ("rans", 8192, ["lm_head"])
    keys = set(json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())["weight_map"])
    assert "lm_head.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys  # 64x64 < 8192
    assert "model.layers.0.mlp.up_proj.weight.llmcomp_data" in keys
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "c", "--preset", "no-such-preset")
    assert rc == 2 and "no-such-preset" in err
    if "lossless" in preset_names():
        rc, _, err = run_cli(capsys, "compress", src, tmp_path / "b", "--preset", "lossless", "--coder", "rans", "-q")
        assert rc == 0, err
        assert json.loads((tmp_path / "b" / "config.json").read_text())["quantization_config"]["coder"] == "rans"


def test_lossy_config_file_is_streamed(src, tmp_path, capsys):
    from llmcomp_hf.transforms import UniformQuant

    (tmp_path / "lossy.yaml").write_text(json.dumps({"coder": "rans", "stages": [UniformQuant(bits=8).to_dict()]}))
    rc, out, err = run_cli(capsys, "compress", src, tmp_path / "x", "--config", tmp_path / "lossy.yaml", "-q")
    assert rc == 0, err
    assert "lossy uniform" in out and "bits/weight" in out
    keys = json.loads((tmp_path / "x" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.mlp.up_proj.weight.llmcomp_transform" in keys
    assert "model.layers.0.mlp.up_proj.weight" not in keys and "model.norm.weight" in keys
    stages = json.loads((tmp_path / "x" / "config.json").read_text())["quantization_config"]["stages"]
    assert stages == [UniformQuant(bits=8).to_dict()]


def test_decompress_of_a_lossy_checkpoint_writes_its_reconstruction(src, tmp_path, capsys):
    assert run_cli(capsys, "compress", src, tmp_path / "c", "--config", "int8", "-q")[0] == 0
    rc, out, err = run_cli(capsys, "decompress", tmp_path / "c", tmp_path / "plain", "-q")
    assert rc == 0, err
    assert "reconstruction, not the original weights" in out
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["llmcomp_reconstruction"]["lossy"] is True
    assert_same_state(state(tmp_path / "plain"), AutoModelForCausalLM.from_pretrained(tmp_path / "c").state_dict())


def test_selection_rule():
    cfg = LosslessConfig(modules_to_not_convert=["lm_head", "layers.1"])
    sel = lambda name, dtype="BF16", shape=(64, 64): is_selected(TensorInfo(name, dtype, shape), cfg)  # noqa: E731
    assert sel("model.layers.0.self_attn.q_proj.weight")
    assert sel("model.embed_tokens.weight", shape=(1000, 64))
    assert sel("conv.weight", shape=(8, 8, 8, 8))
    assert not sel("model.norm.weight", shape=(4096,))  # 1-D
    assert not sel("model.layers.0.self_attn.q_proj.bias")  # not a weight
    assert not sel("model.layers.0.q_proj.weight", dtype="I8")  # not a configured dtype
    assert not sel("model.layers.0.q_proj.weight", shape=(32, 64))  # below min_numel (4096)
    assert not sel("lm_head.weight")
    assert not sel("model.layers.1.mlp.up_proj.weight")  # run of segments
    assert sel("model.layers.10.mlp.up_proj.weight")  # "layers.1" does not match "layers.10"


def test_fp32_and_workers_give_the_same_bytes(tmp_path, capsys):
    src = tiny_checkpoint(tmp_path / "f32", torch.float32, shard="300KB", kind="gpt2")
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        rc, _, err = run_cli(capsys, "compress", src, out, "--workers", workers, "-q", "--verify")
        assert rc == 0, err
        outs.append({k: v[0] for k, v in tree_digest(out).items() if k.endswith(".safetensors")})
    assert outs[0] == outs[1]
    assert_same_state(state(src), state(tmp_path / "w1"))


def test_checkpoint_saved_by_transformers_decompresses(src, tmp_path, capsys):
    """save_pretrained shards by size, so the parts of one tensor may land in different shards."""
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=LosslessConfig())
    model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    rc, out, err = run_cli(capsys, "inspect", tmp_path / "hf", "--json", "--no-bound")
    assert rc == 0, err
    assert json.loads(out)["totals"]["compressed_tensors"] > 0
    rc, _, err = run_cli(capsys, "verify", tmp_path / "hf", "-q")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "decompress", tmp_path / "hf", tmp_path / "plain", "-q", "--workers", "2")
    assert rc == 0, err
    assert_same_state(state(src), state(tmp_path / "plain"))
    index = json.loads((tmp_path / "plain" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in (tmp_path / "plain").glob("*.safetensors")}
