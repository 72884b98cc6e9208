"""Generate router/v1/*_pb2*.py(i) from proto/router/v1/router.proto.

The one way the generated modules are made; tests/unit/test_proto_drift.py runs
`generate()` into a temporary directory and fails when the committed files differ.

The proto sits at proto/router/v1/ so that `-I proto` makes protoc emit
`from router.v1 import router_pb2`, which is the package the modules live in
(FIELD_NOTES: the include path decides the generated import lines).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTOS = ["router/v1/router.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (with the mypy-protobuf plugins) and return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    plugin_dir = Path(sys.executable).parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see its message above")
    return sorted(p for p in out_dir.rglob("*_pb2*.py*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args()
    if args.out == ROOT:
        # Generate aside, then move into place, so a failed run leaves the tree untouched.
        tmp = ROOT / ".gen-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for f in generate(tmp):
                dest = ROOT / f.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), dest)
                print(f"wrote {dest.relative_to(ROOT)}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        for f in generate(args.out):
            print(f"wrote {f}")


if __name__ == "__main__":
    main()
