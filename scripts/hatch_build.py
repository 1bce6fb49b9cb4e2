"""Build hook: compile proto/keybroker/v1/*.proto into keybroker/v1 (gitignored).

Invariant: generated protobuf modules are produced at install time, never committed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_proto import generate


class ProtoBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Run protoc (grpcio-tools) with mypy-protobuf stubs before every build."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate(Path(self.root))
