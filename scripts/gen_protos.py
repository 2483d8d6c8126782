"""Regenerates the Python gRPC code (with .pyi stubs) from protos/ into gen/python/.

Usage: python scripts/gen_protos.py [--out DIR]. tests/unit/test_protos_fresh.py runs it into a
temporary folder and fails when the committed code differs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sysconfig.get_path("scripts"))
    include = Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Packages, so that setuptools finds them and `import jan.catalog.v1` works everywhere.
    for d in [out / "jan", *(p for p in (out / "jan").rglob("*") if p.is_dir())]:
        if d.name != "__pycache__":
            (d / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "gen" / "python")
    ns = parser.parse_args()
    if ns.out == ROOT / "gen" / "python" and (ns.out / "jan").exists():
        shutil.rmtree(ns.out / "jan")
    generate(ns.out)
    print(f"generated into {ns.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
