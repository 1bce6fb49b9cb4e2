"""Strict YAML: a small, unsurprising subset of YAML 1.1 with the line of every node.

Invariants:
- At most 1 MiB of UTF-8, exactly one document, whose nodes are mappings with string keys,
  sequences and plain scalars. Refused, each as ``Malformed`` (rule ``policy.schema``) whose
  reason starts with ``<source>:<line>:``: anchors and aliases (so no alias bombs), explicit
  tags (``!!python/object``, ``!!binary``, ``!foo``...), merge keys, duplicate keys, non-string
  keys, nesting deeper than 64 levels, ``yes``/``no``/``on``/``off`` booleans, leading-zero
  octal and ``1:30`` sexagesimal integers, non-finite floats, and any syntax error.
- Timestamps with a time zone become aware UTC datetimes; a date or a zone-less timestamp is
  returned as given (the schema decides whether it is acceptable there).
- Parsing never executes anything: PyYAML's pure-Python reader, scanner, parser and composer,
  and only the safe scalar constructors.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from keybroker.errors import Malformed

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
RULE = "policy.schema"

NodePath = tuple[str | int, ...]
_TAG = "tag:yaml.org,2002:"
_BOOL_WORDS = frozenset({"true", "false"})
_AMBIGUOUS_INT = re.compile(r"^[-+]?(0[0-9_]+|[0-9][0-9_]*(:[0-5]?[0-9])+)$")


class _Refused(Exception):
    """Internal: a construct refused at a node (turned into Malformed with the line)."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line = line
        self.what = what


class _StrictLoader(Reader, Scanner, Parser, Composer, SafeConstructor, Resolver):
    """PyYAML's pure-Python safe pipeline with a composer that refuses aliases, anchors and
    explicit tags, and bounds nesting."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            raise _Refused(line, f"aliases are not allowed (*{event.anchor})")
        if isinstance(event, ScalarEvent | CollectionStartEvent):
            if event.anchor is not None:
                raise _Refused(line, f"anchors are not allowed (&{event.anchor})")
            if event.tag is not None:
                raise _Refused(line, f"explicit tags are not allowed ({event.tag})")
        if isinstance(event, CollectionStartEvent):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _Refused(line, f"nesting deeper than {MAX_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)  # type: ignore[arg-type]
            assert node is not None
            return node
        finally:
            if isinstance(event, CollectionStartEvent):
                self._depth -= 1


class _Builder:
    """Turns the composed node tree into plain values and records each path's line."""

    def __init__(self, loader: _StrictLoader) -> None:
        self.loader = loader
        self.lines: dict[NodePath, int] = {}

    def value(self, node: Node, path: NodePath) -> object:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        return self.scalar(node)

    def mapping(self, node: MappingNode, path: NodePath) -> dict[str, object]:
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _TAG + "merge":
                raise _Refused(line, "merge keys (<<) are not allowed")
            if not isinstance(key_node, ScalarNode) or key_node.tag != _TAG + "str":
                shown = key_node.value if isinstance(key_node, ScalarNode) else "a collection"
                raise _Refused(line, f"keys must be strings (found {shown!r}; quote it)")
            key = str(key_node.value)
            if key in out:
                raise _Refused(line, f"duplicate key '{key}' (first on line "
                                     f"{self.lines[(*path, key)]})")
            self.lines[(*path, key)] = line
            out[key] = self.value(value_node, (*path, key))
        return out

    def scalar(self, node: ScalarNode) -> object:
        tag = node.tag.removeprefix(_TAG)
        line = node.start_mark.line + 1
        text = str(node.value)
        if tag in ("str", "value"):
            return text
        if tag == "bool" and text.lower() not in _BOOL_WORDS:
            raise _Refused(line, f"ambiguous boolean {text!r}: write true or false, or quote it")
        if tag == "int" and _AMBIGUOUS_INT.match(text):
            raise _Refused(line, f"ambiguous integer {text!r}: write it in decimal, or quote it")
        if tag not in ("null", "bool", "int", "float", "timestamp"):
            raise _Refused(line, f"unsupported value type {node.tag}")
        value: object = self.loader.yaml_constructors[node.tag](self.loader, node)
        if isinstance(value, float) and not math.isfinite(value):
            raise _Refused(line, f"non-finite number {text!r}")
        if isinstance(value, datetime) and value.utcoffset() is not None:
            return value.astimezone(UTC)
        return value


def _decode(raw: bytes, source: str) -> str:
    if len(raw) > MAX_BYTES:
        raise Malformed(f"{source}:1: document larger than 1 MiB", rule=RULE,
                        expected=f"<= {MAX_BYTES} bytes", actual=f"{len(raw)} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise Malformed(f"{source}:{line}: not valid UTF-8", rule=RULE, expected="UTF-8",
                        actual=f"byte 0x{raw[exc.start]:02x}") from None


def parse_yaml(raw: bytes, source: str) -> tuple[object, dict[NodePath, int]]:
    """Strict YAML ``raw`` (named ``source`` in errors) -> (plain value, 1-based line of every
    node path; a mapping entry's line is its key's)."""
    text = _decode(raw, source)
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise Malformed(f"{source}:1: empty document", rule=RULE,
                            expected="a YAML mapping", actual="nothing")
        builder = _Builder(loader)
        return builder.value(node, ()), builder.lines
    except _Refused as exc:
        raise Malformed(f"{source}:{exc.line}: {exc.what}", rule=RULE) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "syntax error"
        raise Malformed(f"{source}:{line}: not valid YAML: {problem}", rule=RULE) from None
    except yaml.YAMLError as exc:  # ReaderError: a forbidden character
        position = getattr(exc, "position", 0)
        line = text[:position].count("\n") + 1
        reason = getattr(exc, "reason", "unreadable")
        raise Malformed(f"{source}:{line}: not valid YAML: {reason}", rule=RULE) from None
    except (ValueError, OverflowError, TypeError) as exc:  # a scalar constructor gave up
        raise Malformed(f"{source}:1: not valid YAML: {exc}"[:300], rule=RULE) from None
    finally:
        if loader is not None:
            loader.dispose()


def _timestamp(dumper: yaml.SafeDumper, value: datetime) -> yaml.ScalarNode:
    text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return dumper.represent_scalar("tag:yaml.org,2002:timestamp", text)


def dump_yaml(data: object) -> bytes:
    """A block-style YAML document of plain ``data`` (keys in order, aware datetimes as RFC 3339
    timestamps) that ``parse_yaml`` reads back to the same values."""

    class Dumper(yaml.SafeDumper):
        """Safe dumper with RFC 3339 timestamps (a fresh class: no global registration)."""

    Dumper.add_representer(datetime, _timestamp)
    text: str = yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=120)
    return text.encode()
