"""The ``llmcomp`` subcommands: argument handling around ``llmcomp_hf.stream`` and ``llmcomp_hf.hub``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from llmcomp_hf.cli import EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Progress, print_json
from llmcomp_hf.errors import FormatError, LlmcompError


def run(args: argparse.Namespace, progress: Progress) -> int:
    """Dispatch one parsed command; map exceptions to exit codes with a one-line message.

    Damaged input (FormatError, CorruptStreamError, a failed verification) exits 1; usage and config
    errors (CheckpointError, HubError, ValueError) 2; I/O and anything unexpected 3.
    """
    from llmcomp_hf.hub import HubError
    from llmcomp_hf.stream.source import CheckpointError, VerificationError

    handler = {"compress": compress, "calibrate": calibrate, "decompress": decompress, "inspect": inspect,
               "verify": verify, "card": card, "push": push}
    try:
        return handler[args.command](args, progress)
    except KeyboardInterrupt:
        _error("interrupted; no output was left behind")
        return EXIT_INTERRUPTED
    except (VerificationError, FormatError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    except (CheckpointError, HubError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (LlmcompError, OSError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours, or a foreign error not mapped yet: one line, not a traceback
        if os.environ.get("LLMCOMP_DEBUG"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc}; please report this bug (LLMCOMP_DEBUG=1 shows the traceback)")
        return EXIT_ERROR


def _error(message: str) -> None:
    print(f"llmcomp: error: {message}", file=sys.stderr)


def load_config(args: argparse.Namespace) -> Any:
    """CompressionConfig from --config (YAML file or preset name)/--preset plus the per-field flags.

    Raises ValueError on bad input.
    """
    from llmcomp_hf.config import CompressionConfig, LosslessConfig
    from llmcomp_hf.presets import preset_names

    flags = ("coder", "block_size", "min_numel", "calibration")
    overrides = {key: getattr(args, key) for key in flags if getattr(args, key, None) is not None}
    try:
        if args.config:
            if Path(args.config).is_file():
                return CompressionConfig.from_yaml(args.config, **overrides)
            if args.config in preset_names():
                return CompressionConfig.from_preset(args.config, **overrides)
            raise ValueError(f"no such file {args.config!r} and no preset of that name; presets: {preset_names()}")
        if args.preset:
            return CompressionConfig.from_preset(args.preset, **overrides)
        return LosslessConfig(**overrides)
    except ValueError as exc:
        source = f"--config {args.config}" if args.config else f"--preset {args.preset}" if args.preset else "flags"
        raise ValueError(f"invalid configuration ({source}): {exc}") from exc


def compress(args: argparse.Namespace, progress: Progress) -> int:
    import math

    from llmcomp_hf.card import stage_names
    from llmcomp_hf.hub import folder_repo_id, resolve_source
    from llmcomp_hf.stream.compress import compress_checkpoint

    config = load_config(args)
    src, repo_id = resolve_source(args.src, revision=args.revision, cache_dir=args.cache_dir, token=args.token)
    base_model = args.base_model or repo_id
    if base_model is None:
        base_model = folder_repo_id(src)
        if base_model is not None:
            print(f"llmcomp: the card's base_model is {base_model}, from _name_or_path in {src / 'config.json'}; "
                  "--base-model sets another", file=sys.stderr)
    result = compress_checkpoint(
        src, Path(args.dst), config, workers=args.workers, verify=args.verify, overwrite=args.overwrite,
        base_model=base_model, progress=progress,
    )
    n = sum(r.compressed for r in result.records)
    rate = result.original_bytes / max(result.seconds, 1e-9) / 1e6
    weights = [r for r in result.records if r.compressed]
    numel = sum(math.prod(r.shape) for r in weights)
    bpw = f", {8.0 * sum(r.stored_bytes for r in weights) / numel:.3f} bits/weight" if numel else ""
    kind = "lossless" if config.is_lossless else "lossy " + "+".join(stage_names(config.stages))
    checked = "; verified bit for bit" if config.is_lossless else "; verified (plain tensors bit for bit, lossy " \
        "weights against their compress-time reconstruction)"
    print(f"compressed {n} of {len(result.records)} tensors ({kind}{bpw}): {result.original_bytes:,} -> "
          f"{result.stored_bytes:,} bytes (ratio {result.ratio:.4f}) in {result.seconds:.1f} s ({rate:.0f} MB/s)"
          + (checked if result.verified else "") + f" -> {args.dst}")
    return EXIT_OK


def calibrate(args: argparse.Namespace, progress: Progress) -> int:
    from llmcomp_hf.calibration import calibrate as measure
    from llmcomp_hf.hub import resolve_source
    from llmcomp_hf.quality import load_sentences

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{str(out)!r} exists; pass --overwrite to replace it")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = load_sentences(args.texts)
    src, _ = resolve_source(args.src, revision=args.revision, cache_dir=args.cache_dir, token=args.token)
    model, tokenizer = _load_model(src)
    calib = measure(model, tokenizer, texts, sensitivity=not args.no_sensitivity, hessian=args.hessian,
                    rows=args.rows, batch_size=args.batch_size)
    tmp = out.with_name(f".{out.name}.tmp")
    calib.save(tmp)
    tmp.replace(out)
    print(f"calibrated {len(calib.shapes)} Linear weights on {calib.meta['texts']} texts ({calib.meta['tokens']} "
          f"tokens){'' if calib.sensitivity else ', no sensitivity'} -> {out}")
    return EXIT_OK


def _load_model(src: Path) -> tuple[Any, Any]:
    """The model of ``src`` (class from ``architectures``, else AutoModel) in eval mode, and its tokenizer."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(src)
    arch = next(iter(getattr(cfg, "architectures", None) or []), None)
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    cls = cls if isinstance(cls, type) and hasattr(cls, "from_pretrained") else transformers.AutoModel
    return cls.from_pretrained(src).eval(), transformers.AutoTokenizer.from_pretrained(src)


def decompress(args: argparse.Namespace, progress: Progress) -> int:
    from llmcomp_hf.stream.compress import decompress_checkpoint

    result = decompress_checkpoint(Path(args.src), Path(args.out), workers=args.workers, overwrite=args.overwrite,
                                   progress=progress, max_output_bytes=args.max_output)
    n = sum(r.compressed for r in result.records)
    print(f"decompressed {n} tensors ({len(result.records)} in all, {result.original_bytes:,} bytes, checksums "
          f"verified) in {result.seconds:.1f} s -> {args.out}"
          + ("; lossy weights written as their reconstruction, not the original weights" if result.lossy else ""))
    return EXIT_OK


def inspect(args: argparse.Namespace, progress: Progress) -> int:
    from llmcomp_hf.stream.check import inspect_checkpoint

    report = inspect_checkpoint(Path(args.path), bound=not args.no_bound, workers=args.workers,
                                max_output_bytes=args.max_output)
    totals = report.totals()
    if args.json:
        print_json({"path": report.path, "tensors": [r.to_dict() for r in report.rows], "totals": totals,
                    "quantization_config": (report.config or {}).get("quantization_config")})
        return EXIT_OK
    head = ("tensor", "dtype", "shape", "stored", "stages", "ratio", "bits/w", "bound")
    lines = [head]
    for r in report.rows:
        stored = f"llmcomp/{r.coder}" if r.compressed else "plain"
        bound = "" if r.bound_bits is None else f"{r.bound_bits:.3f}"
        lines.append((r.name, r.dtype, "x".join(map(str, r.shape)) or "scalar", stored, "+".join(r.stages) or "-",
                      f"{r.ratio:.4f}", f"{r.bits_per_weight:.3f}", bound))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    for row in lines:
        pairs = enumerate(zip(row, widths, strict=True))
        print("  ".join(str(c).ljust(w) if i < 5 else str(c).rjust(w) for i, (c, w) in pairs))
    bpw, bound = totals["bits_per_weight"], totals["bound_bits_per_weight"]
    print(f"\n{totals['tensors']} tensors, {totals['compressed_tensors']} compressed: {totals['original_bytes']:,} -> "
          f"{totals['stored_bytes']:,} bytes, ratio {totals['ratio']:.4f}"
          + (f"; compressed weights {bpw:.3f} bits/weight" if bpw is not None else "")
          + (f" (order-0 bound {bound:.3f}, one table per plane and tensor)" if bound is not None else ""))
    return EXIT_OK


def verify(args: argparse.Namespace, progress: Progress) -> int:
    from llmcomp_hf.stream.check import verify_checkpoint

    report = verify_checkpoint(Path(args.path), workers=args.workers, progress=progress,
                               max_output_bytes=args.max_output)
    if report.error:
        _error(f"verification failed: {report.error}")
        return EXIT_FAILED
    n = sum(r.compressed for r in report.rows)
    print(f"ok: {n} compressed tensors decoded with valid checksums, {len(report.rows) - n} plain tensors, "
          f"format fields and index consistent ({report.seconds:.1f} s)")
    return EXIT_OK


def card(args: argparse.Namespace, progress: Progress) -> int:
    from llmcomp_hf.card import read_card
    from llmcomp_hf.stream import restore_card
    from llmcomp_hf.card_merge import is_merged

    folder = Path(args.path)
    path = restore_card(folder, base_model=args.base_model, repo_id=args.repo_id)
    written = read_card(folder)
    if written is None or "llmcomp" not in written.data.to_dict():
        _error(f"{path} was left as it is: fix its YAML front matter and run `llmcomp card {args.path}` again")
        return EXIT_USAGE
    how = "merged the llmcomp facts into the existing card" if is_merged(written.text) else "wrote the llmcomp card"
    print(f"{how}: {path}")
    return EXIT_OK


def push(args: argparse.Namespace, progress: Progress) -> int:
    from llmcomp_hf.hub import push_folder

    try:
        info = push_folder(Path(args.path), args.repo_id, private=args.private or None, token=args.token,
                           revision=args.revision, commit_message=args.commit_message, card=not args.no_card)
    except (LlmcompError, ValueError, OSError):
        raise
    except Exception as exc:  # huggingface_hub's HTTP/auth errors have no common base we can name here
        _error(f"upload to {args.repo_id!r} failed: {exc}")
        return EXIT_ERROR
    print(f"pushed {args.path} to {getattr(info, 'commit_url', None) or args.repo_id}")
    return EXIT_OK
