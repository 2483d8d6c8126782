"""The committed generated code must be exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True
    )
    committed = ROOT / "gen" / "python"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    existing = {
        p.relative_to(committed): p.read_bytes()
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(fresh) == set(existing), "generated files differ: run `make proto`"
    stale = [str(path) for path, data in fresh.items() if existing[path] != data]
    assert not stale, f"stale generated code: {stale}; run `make proto`"
