"""The committed fixtures of format parts 2 and 3 are frozen: their bytes may not change.

A fixture is a file some version of llmcomp-hf wrote; every later version must keep reading it as it is.
Regenerating one (tests/format/make_golden.py) would hide a reader that no longer reads old files, so
this test fails on any change. For a new format version, add new fixtures beside the old ones and list
them here; never edit or remove a line (safetensors writes ``__metadata__`` in hash-map order, so a
rerun of the script gives other bytes even when nothing changed).
"""

from __future__ import annotations

import hashlib

from .helpers import DATA

FROZEN = {
    "lossy.safetensors": "228e7639ffae87456387197c2b961788039accc3ce016a9b93a72ef2ea261a6e",  # 7068 bytes
    "lossy_expected.safetensors": "031f831956783804bbe6b1a01d9e39c9fc09a5eb5adc01bed2c68c525c591eeb",  # 4496 bytes
    "lossy_inputs.safetensors": "b2d2c070613c6d3d87016cab000bfdbe8b82ede6f908e82d9cf480e0f1ca05a9",  # 4496 bytes
    "shard.safetensors": "06b0b2a0f2824cfcacb86b7e0f69873cf11430ffcfe7f6fec3b1506e7ae30b3e",  # 5722 bytes
    "shard_expected.safetensors": "a20c0e51c78a57c2008805ab9b25efa16fd9b87e4a5ba4e4173d7a69e43b574b",  # 4664 bytes
}


def test_fixture_bytes_are_frozen():
    changed = {name: hashlib.sha256((DATA / name).read_bytes()).hexdigest()
               for name in FROZEN if hashlib.sha256((DATA / name).read_bytes()).hexdigest() != FROZEN[name]}
    assert not changed, f"committed golden fixtures changed: {sorted(changed)}; restore them (git checkout tests/format/data)"


def test_every_fixture_is_frozen():
    assert sorted(p.name for p in DATA.iterdir()) == sorted(FROZEN), "list every fixture file in FROZEN"
