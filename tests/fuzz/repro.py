"""Reproducer files for fuzz failures: the input's bytes plus a one-line description."""

from __future__ import annotations

from pathlib import Path

from .runner import Failure, Tally


def _codec(folder: Path, failure: Failure, campaign: int) -> str:
    from .seeds import codec_seeds
    from .targets_codec import codec_input

    seeds = codec_seeds()
    target, inp = codec_input(seeds, campaign, failure.i)
    (folder / "header.json").write_bytes(inp.header)
    (folder / "data.bin").write_bytes(inp.data)
    (folder / "index.bin").write_bytes(inp.index)
    return (f"codec seed {seeds[inp.seed].name} target {target} ({'direct' if failure.i & 1 else 'from_parts'}): "
            f"{inp.what}")


def _checkpoint(folder: Path, failure: Failure, campaign: int, root: str) -> str:
    from .targets_ckpt import ckpt_input, load_seeds

    inp = ckpt_input(load_seeds(root), campaign, failure.i)
    (folder / inp.file).write_bytes(inp.data)
    return f"checkpoint {inp.checkpoint} file {inp.file} target {inp.target}: {inp.what}"


def save_failures(out: Path, tally: Tally, campaign: int, root: str = "") -> list[str]:
    """Write every failure's input under ``out``; return one line per failure."""
    lines = []
    for f in tally.failures:
        folder = out / f"{f.kind}-seed{campaign}-{f.i}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            what = _codec(folder, f, campaign) if f.kind == "codec" else \
                _checkpoint(folder, f, campaign, root) if f.kind == "checkpoint" else f.kind
        except Exception as exc:  # noqa: BLE001 - the failure is still reported
            what = f"(input not rebuilt: {type(exc).__name__}: {exc})"
        line = f"{f.kind} input {f.i} of seed {campaign}: {f.outcome} {f.detail} | {what} | {folder}"
        (folder / "README.txt").write_text(line + "\n")
        lines.append(line)
    return lines
