"""Published JSON Schemas: valid Draft 2020-12, documented, closed; example documents conform."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from support.paths import CONFIG

from keybroker.document import SCHEMAS, load_document, read_document, schema


def _object_schemas(node: object, path: str = "") -> Iterator[tuple[str, dict[str, object]]]:
    """Every schema with ``properties`` outside conditional (allOf/if/then/else) branches."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            if key in ("allOf", "if", "then", "else"):
                continue
            yield from _object_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_schemas(value, f"{path}/{index}")


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    """Each published schema is itself a valid Draft 2020-12 schema with its $id."""
    published = schema(name)
    Draft202012Validator.check_schema(published)
    assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert published["$id"] == f"https://keybroker.dev/schemas/v1/{name}.json"
    assert published.get("description")


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_property_documented_and_closed(name: str) -> None:
    """Every property has a description and every object refuses unknown fields."""
    for path, node in _object_schemas(schema(name)):
        assert node.get("additionalProperties") is False, path
        properties = node["properties"]
        assert isinstance(properties, dict)
        for key, sub in properties.items():
            assert isinstance(sub, dict) and sub.get("description"), f"{path}/{key}"


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_pattern_is_described(name: str) -> None:
    """A pattern always comes with a human description (used as the expected value)."""
    def walk(node: object) -> Iterator[dict[str, object]]:
        if isinstance(node, dict):
            if "pattern" in node:
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    for node in walk(schema(name)):
        assert node.get("description"), node


def test_example_release_rules_conform() -> None:
    """config/release-rules.yaml validates against the release-rules schema."""
    doc = read_document(CONFIG / "release-rules.yaml", "release-rules")
    assert doc.kind == "ReleaseRules"


POLICIES = sorted((CONFIG / "policies").glob("*.yaml"))


def test_example_policies_exist() -> None:
    """The example appraisal policies have been converted to YAML."""
    assert POLICIES
    assert not list((CONFIG / "policies").glob("*.toml"))


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policies_conform(path: Path) -> None:
    """Every config/policies/*.yaml validates against the appraisal-policy schema."""
    doc = read_document(path, "appraisal-policy")
    assert doc.kind == "AppraisalPolicy"
    assert doc.data["name"] == path.stem


def test_reference_values_example() -> None:
    """The documented reference-values shape validates, with UTC instants."""
    raw = (b"kind: ReferenceValues\nname: snp-launch\nvalues:\n"
           b"  - name: ovmf-2026.09\n    value: 5d8e\n"
           b"    not_before: 2026-01-01T00:00:00Z\n    not_after: 2027-01-01T00:00:00Z\n")
    doc = load_document(raw, "refs.yaml", "reference-values")
    values = doc.data["values"]
    assert isinstance(values, list) and values[0]["not_after"].year == 2027


def test_policy_test_case_example() -> None:
    """The documented policy-test-case shape validates; deny needs a category."""
    raw = (b"kind: PolicyTestCase\nname: debug guest is refused\nat: 2026-03-01T00:00:00Z\n"
           b"evidence_file: ../claims/snp-good.json\nset: {policy.debug: true}\n"
           b"expect: {decision: deny, category: PLATFORM_POLICY, rule: snp.allow_debug}\n")
    doc = load_document(raw, "case.yaml", "policy-test-case")
    assert doc.data["set"] == {"policy.debug": True}
