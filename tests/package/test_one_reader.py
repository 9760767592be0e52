"""Every safetensors file the package reads goes through ``format.safetensors_file.SafetensorsFile``:
one header check (safetensors' own rules and ours), so a damaged shard gets one verdict everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llmcomp_hf"
READERS = {"safe_open", "load_file", "load"}  # safetensors' readers (safetensors.torch.load: bytes)


def test_no_module_reads_safetensors_files_but_the_one_reader():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                names = {alias.name for alias in node.names} & READERS
                if names:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {sorted(names)}")
    assert not found, "read safetensors files with SafetensorsFile instead:\n" + "\n".join(found)
