"""Differences between two policy documents: a unified text diff and a semantic summary.

Invariants:
- The text diff is over the exact bytes (decoded as UTF-8, invalid bytes replaced), so a
  reviewer sees every byte that will be stored.
- The semantic summary is computed on the parsed, validated data, never on text: reordering
  keys, re-quoting or re-indenting changes nothing in it. Fields are named by dotted path
  (``snp.min_tcb.microcode``); list elements that are mappings with a unique ``name`` are
  named by it (``conditions[single-socket].when``), other mapping elements by index; lists of
  scalars are compared as whole values.
- Each change is exactly one of added, removed or changed, and the summary is sorted by path.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

ADDED, REMOVED, CHANGED = "added", "removed", "changed"


@dataclass(frozen=True)
class FieldChange:
    """One field that differs between the old and the new document."""

    path: str
    change: str  # "added" | "removed" | "changed"
    old: object = None
    new: object = None

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"path": self.path, "change": self.change, "old": _plain(self.old),
                "new": _plain(self.new)}

    def line(self) -> str:
        """``~ path: old -> new`` / ``+ path: new`` / ``- path: old``."""
        if self.change == ADDED:
            return f"+ {self.path}: {render(self.new)}"
        if self.change == REMOVED:
            return f"- {self.path}: {render(self.old)}"
        return f"~ {self.path}: {render(self.old)} -> {render(self.new)}"


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def render(value: object) -> str:
    """A compact one-line JSON rendering (at most 200 characters)."""
    text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 200 else text[:197] + "..."


def unified_diff(old: bytes, new: bytes, old_name: str, new_name: str) -> str:
    """The unified diff of two documents' text (empty when identical)."""
    a = old.decode("utf-8", "replace").splitlines(keepends=True)
    b = new.decode("utf-8", "replace").splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(a, b, fromfile=old_name, tofile=new_name):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def _keyed(items: list[object]) -> dict[str, object] | None:
    """Name-keyed elements when every element is a mapping with a unique string ``name``."""
    out: dict[str, object] = {}
    for item in items:
        if not isinstance(item, Mapping):
            return None
        name = item.get("name")
        if not isinstance(name, str) or name in out:
            return None
        out[name] = item
    return out


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _container(value: object) -> bool:
    if isinstance(value, Mapping):
        return True
    return isinstance(value, list) and any(isinstance(v, Mapping) for v in value)


def _walk(path: str, old: object, new: object, out: list[FieldChange]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            sub = _join(path, str(key))
            if key not in new:
                out.append(FieldChange(sub, REMOVED, old=old[key]))
            elif key not in old:
                out.append(FieldChange(sub, ADDED, new=new[key]))
            else:
                _walk(sub, old[key], new[key], out)
        return
    if isinstance(old, list) and isinstance(new, list) and (_container(old) or _container(new)):
        a, b = _keyed(old), _keyed(new)
        if a is not None and b is not None:
            for name in sorted(set(a) | set(b)):
                sub = f"{path}[{name}]"
                if name not in b:
                    out.append(FieldChange(sub, REMOVED, old=a[name]))
                elif name not in a:
                    out.append(FieldChange(sub, ADDED, new=b[name]))
                else:
                    _walk(sub, a[name], b[name], out)
            return
        for index in range(max(len(old), len(new))):
            sub = f"{path}[{index}]"
            if index >= len(new):
                out.append(FieldChange(sub, REMOVED, old=old[index]))
            elif index >= len(old):
                out.append(FieldChange(sub, ADDED, new=new[index]))
            else:
                _walk(sub, old[index], new[index], out)
        return
    if _plain(old) != _plain(new) or type(old) is not type(new):
        out.append(FieldChange(path or "(document)", CHANGED, old=old, new=new))


def semantic_diff(old: Mapping[str, object], new: Mapping[str, object]) -> list[FieldChange]:
    """Fields added, removed or changed from ``old`` to ``new`` (parsed documents)."""
    out: list[FieldChange] = []
    _walk("", old, new, out)
    return out
