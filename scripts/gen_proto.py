"""Compile proto/keybroker/v1/*.proto into keybroker/v1/ with grpcio-tools and mypy-protobuf.

Run directly (``python scripts/gen_proto.py``) after editing a .proto file in a dev checkout.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def generate(root: Path) -> None:
    """Generate *_pb2.py, *_pb2_grpc.py and .pyi stubs for every proto under proto/."""
    from grpc_tools import protoc  # imported lazily: build-time dependency only

    proto_root = root / "proto"
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files under proto/")
    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    bindir = Path(sys.executable).parent
    plugins = [
        f"--plugin=protoc-gen-{name}={found}"
        for name in ("mypy", "mypy_grpc")
        if (
            found := shutil.which(f"protoc-gen-{name}", path=str(bindir))
            or shutil.which(f"protoc-gen-{name}")
        )
    ]
    args = [
        "grpc_tools.protoc",
        *plugins,
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={root}",
        f"--grpc_python_out={root}",
        f"--mypy_out={root}",
        f"--mypy_grpc_out={root}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    init = root / "keybroker" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC/protobuf modules (built at install time)."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
