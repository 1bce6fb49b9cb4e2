"""Empty allow-lists: every list field of every TEE's appraisal policy refuses ``[]`` at load, the
same way (issue 10: an empty TDX RTMR/MRSEAM list used to accept anything while an empty MRTD
list matched nothing). The field list comes from the published schema, so a field added later is
covered without touching this file."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from support.paths import CONFIG
from support.policy_docs import to_yaml

from keybroker.document import Document, schema
from keybroker.document_reader import EMPTY_LIST_EXPECTED, DocumentReader
from keybroker.errors import Category, Malformed
from verifier.policy.compile import parse_policy

_DEMO = {"snp": "snp-demo.yaml", "tdx": "tdx-demo.yaml", "sgx": "sgx-demo.yaml",
         "tpm": "tpm-demo.yaml", "maa": "maa-demo.yaml", "az_snp_vtpm": "azsnp-demo.yaml",
         "az_tdx_vtpm": "aztdx-demo.yaml", "nitro": "nitro-demo.yaml"}


def _list_fields() -> Iterator[tuple[str, ...]]:
    """(section, field) or (field,) for every array property of the appraisal-policy schema."""
    properties = schema("appraisal-policy")["properties"]
    assert isinstance(properties, dict)
    for name, node in properties.items():
        if node.get("type") == "array":
            yield (name,)
        for field, sub in node.get("properties", {}).items():
            if sub.get("type") == "array":
                yield name, field


LIST_FIELDS = sorted(_list_fields())


def _base(path: tuple[str, ...]) -> dict[str, object]:
    tee = path[0] if path[0] in _DEMO else "snp"   # workload and top-level lists: an SNP policy
    data = yaml.safe_load((CONFIG / "policies" / _DEMO[tee]).read_text())
    assert isinstance(data, dict)
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def test_every_list_field_of_every_tee_is_covered() -> None:
    """The schema lists the allow-lists of all three TEEs, the workload and the bindings."""
    sections = {p[0] for p in LIST_FIELDS}
    assert {"snp", "tdx", "sgx", "workload", "reference_values", "conditions"} <= sections
    assert ("tdx", "rtmr0") in LIST_FIELDS and ("tdx", "mrseam") in LIST_FIELDS
    assert ("snp", "host_data") in LIST_FIELDS and ("sgx", "mrenclave") in LIST_FIELDS


@pytest.mark.parametrize("path", LIST_FIELDS, ids=".".join)
def test_an_empty_list_is_refused_naming_the_field(path: tuple[str, ...]) -> None:
    """``[]`` in any list field is MALFORMED at that field: expected at least one entry."""
    data = _base(path)
    target = data
    for key in path[:-1]:
        child = target.setdefault(key, {})
        assert isinstance(child, dict)
        target = child
    target[path[-1]] = []
    with pytest.raises(Malformed) as exc:
        parse_policy(to_yaml(data), "empty.yaml")
    assert exc.value.category is Category.MALFORMED
    assert f"at '{'.'.join(path)}'" in exc.value.reason
    assert exc.value.expected == "at least 1 item" and exc.value.actual == "list of 0"


def test_the_reader_refuses_empty_lists_behind_the_schema() -> None:
    """The compile step's own check (second line of defence) refuses ``[]`` too, while an
    absent list takes its default."""
    doc = Document(source="x.yaml", raw=b"", data={"tdx": {"rtmr0": []}})
    reader = DocumentReader(doc, ("tdx",), {"rtmr0": []})
    with pytest.raises(Malformed) as exc:
        reader.hex_values("rtmr0", 48)
    assert exc.value.expected == EMPTY_LIST_EXPECTED and "tdx.rtmr0" in exc.value.reason
    assert reader.hex_values("rtmr1", 48) == frozenset()
    assert reader.array("allowed_vmpls", [0]) == [0]
