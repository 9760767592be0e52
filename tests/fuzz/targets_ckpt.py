"""Checkpoint-level targets: every loader of a mutated tiny checkpoint, judged against the original."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmcomp_hf.errors import LlmcompError

from .mutate_files import mutate_file
from .seeds import CHECKPOINTS, checkpoint_files
from .targets_codec import ERROR, FOREIGN, IDENTICAL, SILENT, UNVERIFIED, foreign, same_bits

CKPT_TARGETS = ("load_checkpoint", "prefetch", "verify_checkpoint", "decompress_checkpoint",
                "from_pretrained:load", "from_pretrained:load:no-prefetch",
                "from_pretrained:on_the_fly", "from_pretrained:on_the_fly:no-prefetch",
                "cli:verify", "cli:decompress", "cli:inspect")
DECLINED = "declined"  # the prefetcher left every damaged weight to the loader (documented)


@dataclass
class CkptInput:
    checkpoint: str
    target: str
    file: str
    data: bytes
    what: str


def load_seeds(root: str) -> dict[str, dict[str, bytes]]:
    """{checkpoint kind: {file name: bytes}} of the seed checkpoints under ``root``."""
    return {kind: {name: (Path(root) / kind / name).read_bytes() for name in checkpoint_files(Path(root) / kind)}
            for kind in CHECKPOINTS}


def ckpt_input(seeds: dict[str, dict[str, bytes]], campaign: int, i: int) -> CkptInput:
    rng = np.random.default_rng([campaign, i, 2])
    kind = CHECKPOINTS[int(rng.integers(len(CHECKPOINTS)))]
    target = CKPT_TARGETS[int(rng.integers(len(CKPT_TARGETS)))]
    if kind == "lossy":  # lossy weights cannot stay encoded in memory (a documented FormatError)
        target = target.replace("on_the_fly", "load")
    names = sorted(seeds[kind])
    weights = [4 if n.endswith(".safetensors") else 1 for n in names]
    name = names[int(rng.choice(len(names), p=np.array(weights) / sum(weights)))]
    data, what = mutate_file(name, seeds[kind][name], rng)
    return CkptInput(kind, target, name, data, what)


def _same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> str:
    if got.keys() != want.keys():
        return f"keys differ: {sorted(got.keys() ^ want.keys())[:4]}"
    bad = [k for k in want if not same_bits(got[k], want[k])]
    return f"tensors differ: {bad[:4]}" if bad else ""


def _replace(path: Path, data: bytes) -> None:
    """Write a new file in ``path``'s place (a new inode: mappings of the old one keep their bytes)."""
    tmp = path.with_name(path.name + ".fuzz-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CheckpointTargets:
    """The worker-side state: working copies of the seed checkpoints and what they decode to."""

    def __init__(self, root: str) -> None:
        from llmcomp_hf.format.reader import load_checkpoint

        self.seeds = load_seeds(root)
        self.tmp = Path(tempfile.mkdtemp(prefix="llmcomp-fuzz-"))
        self.work = {kind: self.tmp / kind for kind in CHECKPOINTS}
        for kind in CHECKPOINTS:
            shutil.copytree(Path(root) / kind, self.work[kind])
        # cloned: plain tensors are views of the mapped file (safetensors), which the inputs replace
        self.state = {kind: {k: v.clone() for k, v in load_checkpoint(self.work[kind]).items()} for kind in CHECKPOINTS}
        self.ids = torch.arange(1, 17).reshape(1, 16)
        self.logits = {(kind, mode): self._logits(self.work[kind], mode) for kind in CHECKPOINTS
                       for mode in ("load", "on_the_fly") if (kind, mode) != ("lossy", "on_the_fly")}

    def _logits(self, folder: Path, mode: str) -> torch.Tensor:
        import transformers

        import llmcomp_hf

        with llmcomp_hf.load_options(decode=mode):
            model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            return model(self.ids).logits

    def run(self, inp: CkptInput) -> tuple[str, str]:
        folder = self.work[inp.checkpoint]
        _replace(folder / inp.file, inp.data)
        try:
            return self._judge(inp, folder)
        finally:
            _replace(folder / inp.file, self.seeds[inp.checkpoint][inp.file])
            shutil.rmtree(self.tmp / "out", ignore_errors=True)

    def _judge(self, inp: CkptInput, folder: Path) -> tuple[str, str]:
        from llmcomp_hf.format.reader import load_checkpoint

        want = self.state[inp.checkpoint]
        try:
            if inp.target == "load_checkpoint":
                diff = _same_state(load_checkpoint(folder), want)
            elif inp.target == "prefetch":
                return self._prefetch(folder, want)
            elif inp.target == "verify_checkpoint":
                from llmcomp_hf.stream.check import verify_checkpoint

                report = verify_checkpoint(folder)
                if report.error:
                    return ERROR, "report.error"
                try:
                    diff = _same_state(load_checkpoint(folder), want)
                except LlmcompError as exc:
                    return FOREIGN, f"verify passed but load_checkpoint refuses: {exc}"[:300]
            elif inp.target == "decompress_checkpoint":
                from llmcomp_hf.stream.compress import decompress_checkpoint

                decompress_checkpoint(folder, self.tmp / "out")
                diff = _same_state(load_checkpoint(self.tmp / "out"), want)
            elif inp.target.startswith("cli:"):
                return self._cli(inp, folder, want)
            else:
                diff = self._from_pretrained(inp, folder)
                if diff and inp.file == "config.json" and "quantization_config" not in inp.what:
                    return UNVERIFIED, "config.json defines the model (dtype, rope, ...): other logits expected"
        except LlmcompError as exc:
            return ERROR, type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
            return foreign(exc)
        return (SILENT, diff) if diff else (IDENTICAL, "")

    def _cli(self, inp: CkptInput, folder: Path, want: dict[str, torch.Tensor]) -> tuple[str, str]:
        """``llmcomp COMMAND`` in-process: exit 0 (then judged like the library call), 1 (damaged) or 2 (cannot
        run as asked); anything else, or a traceback on stderr, is a failure."""
        import contextlib
        import io

        from llmcomp_hf.cli import main
        from llmcomp_hf.format.reader import load_checkpoint

        command = inp.target.split(":")[1]
        args = {"verify": ["verify", str(folder), "-q"], "inspect": ["inspect", str(folder)],
                "decompress": ["decompress", str(folder), str(self.tmp / "out"), "-q"]}[command]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(args)
            except SystemExit as exc:  # argparse only
                rc = exc.code
        if "Traceback" in err.getvalue() or rc not in (0, 1, 2):
            return FOREIGN, f"llmcomp {command} exit {rc}: {err.getvalue()[-300:]}"
        if rc:
            return ERROR, f"exit {rc}"
        if command == "inspect":
            return IDENTICAL, ""
        if command == "verify":  # exit 0 promises that from_pretrained loads it (docs: llmcomp verify)
            return self._verified_loads(inp, folder, want)
        try:
            diff = _same_state(load_checkpoint(self.tmp / "out" if command == "decompress" else folder), want)
        except LlmcompError as exc:
            return FOREIGN, f"llmcomp {command} exited 0 but load_checkpoint refuses: {exc}"[:300]
        return (SILENT, diff) if diff else (IDENTICAL, "")

    def _verified_loads(self, inp: CkptInput, folder: Path, want: dict[str, torch.Tensor]) -> tuple[str, str]:
        from llmcomp_hf.format.reader import load_checkpoint

        try:
            diff = _same_state(load_checkpoint(folder), want)
            if not diff:
                diff = self._from_pretrained(CkptInput(inp.checkpoint, "from_pretrained:load", inp.file, b"", ""), folder)
        except Exception as exc:  # noqa: BLE001 - any refusal after verify said ok breaks its promise
            return FOREIGN, f"llmcomp verify exited 0 but loading refuses: {type(exc).__name__}: {exc}"[:300]
        if diff and inp.file == "config.json" and "quantization_config" not in inp.what:
            return UNVERIFIED, "config.json defines the model (dtype, rope, ...): other logits expected"
        return (SILENT, diff) if diff else (IDENTICAL, "")

    def _from_pretrained(self, inp: CkptInput, folder: Path) -> str:
        import transformers

        import llmcomp_hf

        mode = inp.target.split(":")[1]
        os.environ["LLMCOMP_PREFETCH"] = "0" if inp.target.endswith("no-prefetch") else "1"
        with llmcomp_hf.load_options(decode=mode):
            model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            got = model(self.ids).logits
        return "" if same_bits(got, self.logits[(inp.checkpoint, mode)]) else "logits differ from the original's"

    def _prefetch(self, folder: Path, want: dict[str, torch.Tensor]) -> tuple[str, str]:
        from llmcomp_hf._prefetch import Prefetcher, discover
        from llmcomp_hf.format.reader import checkpoint_files as files_of
        from llmcomp_hf.format.safetensors_file import SafetensorsFile

        found = discover(files_of(folder))
        if found.lossy or not found.weights:  # as prefetch_checkpoint: lossy checkpoints are not prefetched
            return DECLINED, "nothing to prefetch"
        names = {n: f for n, f in found.bases.items() if n not in found.lossy}
        pre = Prefetcher(names.items(), part_files=found.part_files).start()
        declined = 0
        try:
            for name in names:
                key = f"{name}.llmcomp_header"
                with SafetensorsFile(found.part_files[key]) as handle:
                    header = handle.get_tensor(key)
                got = pre.take(header)
                if got is None:
                    declined += 1
                elif name not in want or not same_bits(got, want[name]):
                    return SILENT, f"prefetch handed out a wrong {name}"
        finally:
            pre.close()
        return (DECLINED, f"{declined} left to the loader") if declined else (IDENTICAL, "")
