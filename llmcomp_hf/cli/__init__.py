"""``llmcomp``: compress, decompress, inspect, verify, card and push llmcomp checkpoints from the shell.

Exit codes: 0 success; 1 verification or corruption failure (a tensor does not decode, a checksum
or a format field is wrong, a round trip differs); 2 usage error (bad arguments or config, missing
or wrong input, existing output); 3 other failures (I/O, Hub); 130 interrupted.
torch, numba and transformers are imported only once a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from llmcomp_hf.coders import CHECKPOINT_CODERS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class Progress:
    """A one-line progress bar on stderr (redrawn at most 10 times a second; a line per phase when not a TTY)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._phase, self._start, self._last = "", 0.0, 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if phase != self._phase:
            self._phase, self._start, self._last = phase, now, now
        finished = done >= total
        if not finished and now - self._last < (0.1 if self.tty else 10.0):
            return
        self._last = now
        frac = done / total if total else 1.0
        elapsed = now - self._start
        rate = done / elapsed / 1e6 if elapsed > 0.05 else 0.0
        bar = "#" * int(frac * 24) + "." * (24 - int(frac * 24))
        line = f"{phase:<10} [{bar}] {frac:6.1%} {done / 1e9:.2f}/{total / 1e9:.2f} GB {rate:7.0f} MB/s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def output_size(text: str) -> int | None:
    """``--max-output``: bytes, with an optional K/M/G/T (binary) suffix, or ``none`` for no limit."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    if value == "NONE":
        return None
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16G, 500M, 123456789, none)") from None
    if not number >= 0 or number * _SIZE_UNITS[unit] >= 1 << 63:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16G, 500M, 123456789, none)")
    return int(number * _SIZE_UNITS[unit])


def _add_max_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-output", type=output_size, default=16 << 30, metavar="SIZE",
                   help="refuse any tensor that would decode to more than SIZE bytes, before allocating it (a few "
                   "stored bytes can declare any size; default 16G, 'none' for no limit)")


def _add_common(p: argparse.ArgumentParser, workers: bool = True) -> None:
    if workers:
        p.add_argument("--workers", type=int, default=_default_workers(), metavar="N",
                       help="tensors processed in parallel threads (default: %(default)s)")
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bar, only results and errors")


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more from fresh mmaps (glibc only); True if applied.

    glibc raises its mmap threshold to the size of the last freed large block (up to 32 MB), after
    which tensor-sized buffers come from per-thread heaps that keep freed memory: peak RSS then
    creeps up with the number of tensors. A fixed threshold keeps it at the tensors in flight.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # from <malloc.h>
    return bool(libc.mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(threshold)))


def _default_workers() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(4, os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="llmcomp", description="Lossless and lossy compression of LLM checkpoints for Hugging Face transformers.",
        epilog="Exit codes: 0 ok, 1 verification/corruption failure, 2 usage error, 3 I/O or Hub error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compress", help="compress a safetensors checkpoint (folder or Hub repo id)",
                       description="Compress SRC (a model folder or a Hub repo id in the local cache) into the new "
                       "folder DST, shard by shard with bounded memory. DST appears only when complete; the "
                       "folder .DST.partial-HOST-PID-* a killed run leaves is removed by the next run for DST once "
                       "that process is gone (from another host: once a day old).")
    p.add_argument("src", metavar="SRC", help="model folder, or Hub repo id (e.g. org/name)")
    p.add_argument("dst", metavar="DST", help="output folder (must not exist unless --overwrite)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", metavar="FILE|PRESET", help="YAML file of CompressionConfig fields (top level or "
                   "under 'quantization_config'), or a preset name")
    g.add_argument("--preset", metavar="NAME", help=f"a named configuration from configs/ ({_presets()}; default: "
                   "lossless defaults)")
    p.add_argument("--coder", choices=list(CHECKPOINT_CODERS), help="entropy coder (overrides config/preset; see "
                   "the README for each one's ratio and decode speed)")
    p.add_argument("--block-size", type=int, metavar="N", help="elements per block (multiple of 64)")
    p.add_argument("--min-numel", type=int, metavar="N", help="smaller tensors stay uncompressed")
    p.add_argument("--calibration", metavar="FILE", help="calibration file from `llmcomp calibrate` (for calibrated "
                   "presets such as ecq-calibrated; overrides the config's)")
    p.add_argument("--verify", action="store_true", help="decode everything and compare with SRC bit for bit (lossy weights: with "
                   "their reconstruction computed while compressing)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (atomically)")
    p.add_argument("--base-model", metavar="REPO_ID", help="Hub id of the original model, for the model card")
    p.add_argument("--revision", help="Hub revision of SRC (branch, tag or commit)")
    p.add_argument("--cache-dir", help="Hugging Face cache folder to look SRC up in")
    p.add_argument("--token", help="Hub token, for private repos")
    _add_common(p)

    p = sub.add_parser("calibrate", help="measure calibration statistics for calibrated lossy presets",
                       description="Run the texts of --texts (one per line) through the model SRC and write OUT: per "
                       "Linear weight the mean squared input activation per input channel and the sensitivity of "
                       "the output to its quantization error (one forward pass per weight). Use it with "
                       "`llmcomp compress --config ecq-calibrated --calibration OUT` or "
                       "CompressionConfig(calibration=OUT). Use texts that are NOT your evaluation set.")
    p.add_argument("src", metavar="SRC", help="model folder, or Hub repo id (e.g. org/name)")
    p.add_argument("--texts", required=True, metavar="FILE", help="UTF-8 text file, one calibration text per line")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="calibration file to write (.safetensors)")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the per-weight sensitivity (faster; the file "
                   "then supports importance only: calibration_use allocate: false)")
    p.add_argument("--hessian", action="store_true", help="also store each weight's input second moment [in, in] "
                   "(large: in^2 x 4 bytes per weight), for calibration_use gptq: true (preset ecq-gptq)")
    p.add_argument("--rows", action="store_true", help="also store each weight's output-channel importance (16 "
                   "backward passes per batch), for calibration_use rows: true (presets ecq-gptq, ecq8-calibrated)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts per forward pass (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--revision", help="Hub revision of SRC (branch, tag or commit)")
    p.add_argument("--cache-dir", help="Hugging Face cache folder to look SRC up in")
    p.add_argument("--token", help="Hub token, for private repos")
    _add_common(p, workers=False)

    p = sub.add_parser("decompress", help="turn an llmcomp checkpoint back into plain safetensors",
                       description="Decode SRC into the new folder OUT: same shards and index as a plain "
                       "checkpoint, every tensor bit-identical (checksums verified), no quantization_config. "
                       "Lossy weights become their reconstruction (what from_pretrained gives), and OUT's "
                       "config and card say so.")
    p.add_argument("src", metavar="SRC", help="llmcomp checkpoint folder")
    p.add_argument("out", metavar="OUT", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    _add_max_output(p)
    _add_common(p)

    p = sub.add_parser("inspect", help="per-tensor sizes, ratios, bits/weight and entropy bounds",
                       description="Show every tensor of a checkpoint: dtype, shape, stages, stored size, ratio, "
                       "bits/weight and the order-0 entropy bound of its byte planes (one table per plane "
                       "and tensor), with totals.")
    p.add_argument("path", metavar="PATH", help="checkpoint folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-bound", action="store_true", help="skip the entropy bound (reads headers only: instant)")
    _add_max_output(p)
    _add_common(p)

    p = sub.add_parser("verify", help="check every checksum and format field",
                       description="Decode every compressed tensor with checksum verification and check the "
                       "shard metadata, index and config. Exit 1 naming the first bad tensor and file.")
    p.add_argument("path", metavar="PATH", help="checkpoint folder")
    _add_max_output(p)
    _add_common(p)

    p = sub.add_parser("card", help="write or refresh the model card of a compressed folder",
                       description="Re-derive the llmcomp card of PATH from its shards into README.md. A card "
                       "written by another tool (e.g. sentence-transformers' save()) keeps its text: the llmcomp "
                       "facts (figures, base_model, tags) and a section are merged into it.")
    p.add_argument("path", metavar="PATH", help="llmcomp checkpoint folder")
    p.add_argument("--base-model", metavar="REPO_ID", help="Hub id of the original model (default: the card's)")
    p.add_argument("--repo-id", metavar="REPO_ID", help="Hub id this folder will have, for the usage snippet")
    _add_common(p, workers=False)

    p = sub.add_parser("push", help="upload a compressed folder with its model card to the Hub",
                       description="Create REPO_ID if needed and upload PATH (shards, index, config, tokenizer, "
                       "card) with upload_folder. An llmcomp card is re-rendered for REPO_ID first.")
    p.add_argument("path", metavar="PATH", help="folder written by `llmcomp compress`")
    p.add_argument("repo_id", metavar="REPO_ID", help="target repo, e.g. me/model-llmcomp")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="Hub token (default: the stored login)")
    p.add_argument("--revision", help="branch to push to")
    p.add_argument("--commit-message", help="commit message")
    p.add_argument("--no-card", action="store_true", help="upload README.md as it is")
    _add_common(p, workers=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        print("llmcomp: error: --workers must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    from llmcomp_hf.cli.commands import run

    bound_heap()
    try:
        return run(args, Progress(enabled=not args.quiet))
    except BrokenPipeError:  # e.g. `llmcomp inspect PATH | head`: the reader stopped, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _presets() -> str:
    from llmcomp_hf.presets import preset_names  # cheap: lists configs/*.yaml

    return ", ".join(preset_names()) or "none installed"


def _version() -> str:
    from llmcomp_hf import __version__

    return __version__


def print_json(data: Any) -> None:
    """JSON on stdout (the CLI's machine-readable output)."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
