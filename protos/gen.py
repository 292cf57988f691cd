"""Generate the Python gRPC stubs from protos/ into memstage/proto (imported as memstage.proto).

Run `python protos/gen.py` after editing a .proto; `python protos/gen.py --check` fails when the
committed stubs are stale (CI runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "memstage" / "proto"


def generate(dest: Path) -> list[Path]:
    sources = sorted((HERE / "memstage" / "proto").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{HERE}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        args += [str(s.relative_to(HERE)) for s in sources]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = sorted((Path(tmp) / "memstage" / "proto").iterdir())
        dest.mkdir(parents=True, exist_ok=True)
        for f in produced:
            shutil.copy(f, dest / f.name)
        return [dest / f.name for f in produced]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if memstage/proto differs from fresh output")
    args = parser.parse_args()
    if not args.check:
        for f in generate(OUT):
            print(f"wrote {f.relative_to(HERE.parent)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [f.name for f in fresh if not (OUT / f.name).exists() or not filecmp.cmp(f, OUT / f.name, False)]
    if stale:
        print(f"stale generated stubs in memstage/proto: {', '.join(stale)}; run: python protos/gen.py")
        return 1
    print("generated stubs are fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
