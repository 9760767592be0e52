"""Structure-aware mutations of every stored JSON object (issue 8): encoded-tensor headers, lossy
transform headers and model.safetensors.index.json. Whatever the mutation, a reader either accepts
the input or raises an LlmcompError subclass naming the tensor (and file where it has one): never
RecursionError, KeyError, TypeError, AttributeError, UnicodeDecodeError or a raw SafetensorError."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from llmcomp_hf.codec import EncodedTensor, decode, encode
from llmcomp_hf.errors import LlmcompError
from llmcomp_hf.format import check_declared, checkpoint_files, pack
from llmcomp_hf.format.lossy import compress_lossy, decode_lossy, read_header
from llmcomp_hf.format.shard import unpack
from llmcomp_hf.transforms import LowRank, Pipeline, UniformQuant

from .damage import Problems

NAME, FILE = "layers.0.proj.weight", "model-00001-of-00002.safetensors"
DEEP = 100_000  # nesting far beyond Python's recursion limit

VALUES: list[Any] = [None, True, False, 0, -1, 1.5, -(2**63), 2**64, 2**200, float("nan"),
                     float("inf"), "", "x", "\u0000", [], [1], [[]], {}, {"a": 1}, [-1], [2**70], [1.5], ["1"], [None]]


def _text_mutations(obj: dict) -> Iterator[tuple[str, bytes]]:
    """Byte-level mutations of an object's compact JSON."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    yield "deep list", ("[" * DEEP + "]" * DEEP).encode()
    yield "deep object", ('{"a":' * DEEP + "1" + "}" * DEEP).encode()
    yield "deep in a field", text.replace('"format":', '"x":' + "[" * DEEP + "]" * DEEP + ',"format":', 1).encode()
    yield "non-utf8", text.encode()[:5] + b"\xff\xfe" + text.encode()[5:]
    yield "lone surrogate escape", text.replace('"format"', '"\\ud800format"', 1).encode()
    yield "huge int literal", text.replace("{", '{"big":' + "9" * 5000 + ",", 1).encode()
    yield "NaN literal", text.replace("{", '{"n":NaN,', 1).encode()
    yield "-Infinity literal", text.replace("{", '{"n":-Infinity,', 1).encode()
    yield "truncated", text.encode()[: len(text) // 2]
    yield "empty", b""
    yield "top-level list", b"[]"
    yield "top-level string", b'"llmcomp"'
    yield "duplicate keys", text.replace("{", '{"format":null,', 1).encode()
    yield "trailing garbage", text.encode() + b"}}"
    yield "nul bytes", b"\x00" * 64


def _field_mutations(root: dict, path: tuple = ()) -> Iterator[tuple[str, dict]]:
    """Every field (recursively, three levels deep) removed or replaced by every hostile value."""
    node = root
    for key in path:
        node = node[key]
    for key in list(node):
        where = "/".join(map(str, path + (key,)))
        yield f"without {where}", _set(root, path + (key,), _DELETE)
        for value in VALUES:
            yield f"{where}={value!r:.40}", _set(root, path + (key,), value)
        yield f"{where}=deep", _set(root, path + (key,), _deep(2000))
        if isinstance(node[key], dict) and len(path) < 2:
            yield from _field_mutations(root, path + (key,))


_DELETE = object()


def _deep(n: int) -> Any:
    value: Any = []
    for _ in range(n):
        value = [value]
    return value


def _set(obj: dict, path: tuple, value: Any) -> dict:
    root = json.loads(json.dumps(obj))
    node = root
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return root


def _bytes_of(obj: dict) -> bytes | None:
    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    except (ValueError, RecursionError):  # e.g. a nesting json itself cannot write
        return None


def _u8(raw: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)


def _expect(problems: Problems, what: str, call: Callable[[], Any], names: tuple[str, ...]) -> None:
    try:
        call()
    except LlmcompError as exc:
        missing = [n for n in names if n not in str(exc)]
        if missing:
            problems.append(f"{what}: {type(exc).__name__} does not name {missing}: {str(exc)[:160]}")
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        problems.append(f"{what}: foreign {type(exc).__name__}: {str(exc)[:160]}")


def test_encoded_tensor_header_mutations() -> None:
    enc = encode(torch.randn(16, 40).to(torch.bfloat16), block_size=256, name=NAME)
    parts = {k.rsplit("_", 1)[1]: v for k, v in pack(NAME, enc).items()}
    problems = Problems()
    for what, header in _field_mutations(enc.header):
        raw = _bytes_of(header)
        _expect(problems, f"from_parts {what}", lambda: EncodedTensor.from_parts(header, enc.data, enc.index, name=NAME), (NAME,))
        _expect(problems, f"decode {what}", lambda: decode(EncodedTensor(header, enc.data, enc.index, NAME)), (NAME,))
        _expect(problems, f"check_declared {what}", lambda: check_declared(NAME, header, (16, 40), torch.bfloat16, FILE), (NAME, FILE))
        if raw is not None:
            _expect(problems, f"unpack {what}", lambda: unpack(NAME, dict(parts, header=_u8(raw)), FILE), (NAME, FILE))
    for what, raw in _text_mutations(enc.header):
        _expect(problems, f"unpack {what}", lambda: unpack(NAME, dict(parts, header=_u8(raw)), FILE), (NAME, FILE))
        _expect(problems, f"from_parts text {what}", lambda: EncodedTensor.from_parts(raw, enc.data, enc.index, name=NAME), (NAME,))
        _expect(problems, f"check_declared {what}", lambda: check_declared(NAME, _u8(raw), (16, 40), None, FILE), (NAME, FILE))
    for what, tensor in (("int64 header", torch.zeros(4, dtype=torch.int64)), ("2-D header", torch.zeros(2, 2, dtype=torch.uint8)),
                         ("huge header", torch.full((1 << 17,), 32, dtype=torch.uint8))):
        _expect(problems, f"unpack {what}", lambda: unpack(NAME, dict(parts, header=tensor), FILE), (NAME, FILE))
        _expect(problems, f"check_declared {what}", lambda: check_declared(NAME, tensor, (16, 40), None, FILE), (NAME, FILE))
    problems.check()


@pytest.fixture(scope="module")
def lossy() -> tuple[dict, dict]:
    stages = Pipeline(stages=(LowRank(rank=2), UniformQuant(bits=4)))
    lw, _ = compress_lossy(NAME, torch.randn(16, 24), stages)
    parts: dict = {}
    for key, tensor in lw.pack().items():
        if key.endswith(".llmcomp_transform"):
            continue
        base, part = key.rsplit(".", 1)
        parts.setdefault(base[len(NAME) + 1:], {})[part.removeprefix("llmcomp_")] = tensor
    return lw.header, parts


def test_transform_header_mutations(lossy: tuple[dict, dict]) -> None:
    header, parts = lossy
    problems = Problems()
    for what, mutated in _field_mutations(header):
        raw = _bytes_of(mutated)
        if raw is None:
            continue
        _expect(problems, f"read_header {what}", lambda: read_header(NAME, _u8(raw), FILE), (NAME, FILE))
        _expect(problems, f"decode_lossy {what}", lambda: decode_lossy(NAME, _u8(raw), parts, FILE), (NAME, FILE))
        _expect(problems, f"check_declared {what}", lambda: check_declared(NAME, _u8(raw), (16, 24), None, FILE), (NAME, FILE))
    for what, raw in _text_mutations(header):
        _expect(problems, f"read_header {what}", lambda: read_header(NAME, _u8(raw), FILE), (NAME, FILE))
        _expect(problems, f"decode_lossy {what}", lambda: decode_lossy(NAME, _u8(raw), parts, FILE), (NAME, FILE))
    problems.check()


def test_index_json_mutations(tmp_path) -> None:
    base = {"metadata": {"total_size": 10}, "weight_map": {NAME: FILE, "norm.weight": FILE}}
    problems = Problems()
    index = tmp_path / "model.safetensors.index.json"
    cases = [(w, _bytes_of(obj)) for w, obj in _field_mutations(base)] + list(_text_mutations(base))
    for what, raw in cases:
        if raw is None:
            continue
        index.write_bytes(raw)
        _expect(problems, f"index.json {what}", lambda: checkpoint_files(tmp_path), ("model.safetensors.index.json",))
    problems.check()


def test_module_header_mutations() -> None:
    """A module that keeps a weight encoded parses its header buffer like every other reader."""
    from llmcomp_hf.modules import EncodedWeight

    enc = encode(torch.randn(16, 40).to(torch.bfloat16), block_size=256, name=NAME)
    problems = Problems()
    for what, raw in _text_mutations(enc.header):
        weight = EncodedWeight.placeholder(NAME, (enc.data.size, enc.index.size, len(raw)), device="cpu")
        weight.llmcomp_data.copy_(torch.from_numpy(enc.data))
        weight.llmcomp_index.copy_(torch.from_numpy(enc.index))
        weight.llmcomp_header.copy_(_u8(raw))
        _expect(problems, f"EncodedWeight {what}", lambda: weight.encoded, (NAME,))
    problems.check()
