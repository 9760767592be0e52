"""Plain byte-level mutation and structure-aware JSON mutation (every mutator takes a numpy Generator)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

INTERESTING_INTS = (0, 1, -1, 2, 63, 64, 255, 256, 257, 1023, 4095, 4096, 65535, 65536, 2**24, 2**24 + 1,
                    2**31 - 1, 2**31, -2**31, 2**32, 2**40, 2**53 + 1, 2**63 - 1, -2**63, 2**64, 10**30)


def flip(b: bytes, rng: np.random.Generator) -> bytes:
    if not b:
        return b
    out = bytearray(b)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(out)))
        out[i] ^= 1 << int(rng.integers(8)) if rng.random() < 0.7 else int(rng.integers(1, 256))
    return bytes(out)


def insert(b: bytes, rng: np.random.Generator) -> bytes:
    i = int(rng.integers(len(b) + 1))
    return b[:i] + rng.bytes(int(rng.integers(1, 17))) + b[i:]


def delete(b: bytes, rng: np.random.Generator) -> bytes:
    if not b:
        return b
    i = int(rng.integers(len(b)))
    return b[:i] + b[i + int(rng.integers(1, 17)):]


def truncate(b: bytes, rng: np.random.Generator) -> bytes:
    return b[:int(rng.integers(len(b)))] if b else b


def garbage_tail(b: bytes, rng: np.random.Generator) -> bytes:
    return b + rng.bytes(int(rng.integers(1, 65)))


def splice(b: bytes, rng: np.random.Generator, other: bytes | None = None) -> bytes:
    """A run of ``other`` (or of ``b`` itself) copied over a random place of ``b``."""
    src = other if other else b
    if not src or not b:
        return b
    a, n = int(rng.integers(len(src))), int(rng.integers(1, 65))
    i = int(rng.integers(len(b)))
    return b[:i] + src[a:a + n] + b[i + n:]


def overwrite_int(b: bytes, rng: np.random.Generator) -> bytes:
    """An interesting integer written (little-endian, 1/2/4/8 bytes) at a random place."""
    if not b:
        return b
    width = int(rng.choice([1, 2, 4, 8]))
    value = int(rng.choice(INTERESTING_INTS)) % (1 << (8 * width))
    i = int(rng.integers(len(b)))
    return b[:i] + value.to_bytes(width, "little")[:len(b) - i] + b[i + width:]


BYTE_MUTATORS = (flip, insert, delete, truncate, garbage_tail, splice, overwrite_int)


def mutate_bytes(b: bytes, rng: np.random.Generator, other: bytes | None = None) -> tuple[bytes, str]:
    f = BYTE_MUTATORS[int(rng.integers(len(BYTE_MUTATORS)))]
    return (splice(b, rng, other) if f is splice else f(b, rng)), f.__name__


def absurd_value(rng: np.random.Generator, like: Any = None) -> Any:
    """A value of the wrong type, an absurd number, a deep nesting or a near miss of ``like``."""
    pick = int(rng.integers(14))
    if pick == 0:
        return None
    if pick == 1:
        return bool(rng.integers(2))
    if pick == 2:
        return int(rng.choice(INTERESTING_INTS)) * (1 if rng.random() < 0.7 else -1)
    if pick == 3:
        return float(rng.choice([0.5, -0.0, 1e308, 3.0, float("inf"), float("nan")]))
    if pick == 4:
        return str(rng.choice(["", "x", "1", "bfloat16", "float64", "int64", "llmcomp.tensor", "rans", "\udcff"]))
    if pick == 5:
        return []
    if pick == 6:
        return {}
    if pick == 7:
        depth = int(rng.choice([2, 50, 1000, 100000]))
        return json.loads("[" * depth + "]" * depth) if depth <= 500 else _Deep(depth)
    if pick == 8:
        return [absurd_value(rng) for _ in range(int(rng.integers(1, 4)))]
    if pick == 9:
        return {str(rng.integers(9)): absurd_value(rng)}
    if pick == 10 and isinstance(like, int) and not isinstance(like, bool):
        return like + int(rng.choice([-1, 1, 64, -64, 2**32]))
    if pick == 11 and isinstance(like, str) and like:
        return like[:-1] if rng.random() < 0.5 else like + like[-1]
    if pick == 12 and isinstance(like, list) and like:
        return like[:-1] if rng.random() < 0.3 else like + [like[-1]] if rng.random() < 0.5 else like[::-1]
    return str(like) if like is not None else "0"


class _Deep:
    """A nesting too deep to build as Python lists: serialised as raw brackets."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def dumps(obj: Any) -> bytes:
    """JSON text of ``obj`` (deep nestings written as raw brackets, lone surrogates kept as bytes)."""
    deep: list[_Deep] = []

    def default(o: Any) -> Any:
        if isinstance(o, _Deep):
            deep.append(o)
            return f"@@DEEP{len(deep) - 1}@@"
        raise TypeError(type(o).__name__)

    text = json.dumps(obj, separators=(",", ":"), sort_keys=True, default=default, allow_nan=True)
    for i, d in enumerate(deep):
        text = text.replace(f'"@@DEEP{i}@@"', "[" * d.depth + "]" * d.depth)
    return text.encode("utf-8", "surrogateescape")


def _paths(obj: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, at + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:16]):
            out += _paths(v, at + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def mutate_json(obj: Any, rng: np.random.Generator, paths: list[tuple] | None = None) -> tuple[Any, str]:
    """A structurally mutated deep copy of ``obj``: a node replaced, deleted, or a key added.
    ``paths`` restricts the nodes to those under one of these paths."""
    obj = json.loads(json.dumps(obj))
    nodes = [p for p in _paths(obj) if p and (paths is None or any(p[:len(q)] == q for q in paths))]
    if not nodes:
        return absurd_value(rng, obj), "root"
    path = nodes[int(rng.integers(len(nodes)))]
    parent, key = _get(obj, path[:-1]), path[-1]
    op = int(rng.integers(4))
    if op == 0 and isinstance(parent, dict):
        del parent[key]
        return obj, f"delete {path}"
    if op == 1 and isinstance(parent, dict):
        parent[str(rng.choice(["extra", "version", "format", "__proto__", ""]))] = absurd_value(rng)
        return obj, f"add key at {path[:-1]}"
    parent[key] = absurd_value(rng, parent[key])
    return obj, f"replace {path}"


def mutate_json_bytes(raw: bytes, rng: np.random.Generator, paths: list[tuple] | None = None) -> tuple[bytes, str]:
    """Structure-aware (parsed, mutated, written back) or byte-level mutation of a JSON document."""
    if rng.random() < 0.25:
        return mutate_bytes(raw, rng)
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return mutate_bytes(raw, rng)
    if rng.random() < 0.05:
        return raw.replace(b'"', b'"\xff', 1), "non-utf8"
    new, what = mutate_json(obj, rng, paths)
    return dumps(new), f"json {what}"
