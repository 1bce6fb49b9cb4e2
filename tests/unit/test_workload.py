"""Workload identity: the init-data document format, bind-before-parse, WorkloadClaims round
trip, the names / approved_images / require_init_data rules and the recorded-binding check."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.errors import Category, KeybrokerError, Malformed, MeasurementMismatch
from keybroker_cli.demo_setup import DEMO_IMAGE, DEMO_INIT_DATA
from verifier.init_data import HOST_DATA, MRCONFIGID
from verifier.workload import (
    NO_WORKLOAD,
    WorkloadClaims,
    WorkloadPolicy,
    check_binding,
    check_workload,
    parse_init_data,
    workload_claims,
)

IMAGE_A = "sha256:" + "a1" * 32
IMAGE_B = "sha256:" + "b2" * 32
DOC = (b'[workload]\nname = "demo"\nimages = ["' + IMAGE_A.encode() + b'"]\n'
       b'[agent]\npolicy = "default"\npolicy_digest = "sha256:' + b"cd" * 32 + b'"\n')


def bound(doc: bytes = DOC, *, measured: tuple[str, ...] = ()) -> WorkloadClaims:
    return workload_claims(HOST_DATA, hashlib.sha256(doc).digest(), doc, required=True,
                           measured_register="RTMR3" if measured else None,
                           measured_images=measured)


def test_bound_document_becomes_claims() -> None:
    """A bound document's name, images and agent policy become claims naming the register."""
    claims = bound()
    assert claims == WorkloadClaims(
        init_data_register="HOST_DATA", init_data_digest=hashlib.sha256(DOC).hexdigest(),
        name="demo", images=(IMAGE_A,), agent_policy="default",
        agent_policy_digest="sha256:" + "cd" * 32, measured_register=None, measured_images=())
    tdx = workload_claims(MRCONFIGID, hashlib.sha384(DOC).digest(), DOC, required=False,
                          measured_register="RTMR3", measured_images=(IMAGE_B,))
    assert tdx.init_data_register == "MRCONFIGID" and tdx.measured_images == (IMAGE_B,)


def test_demo_init_data_is_a_valid_document() -> None:
    """The demo's init-data follows the format and declares the demo image."""
    doc = parse_init_data(DEMO_INIT_DATA)
    assert doc.name == "demo" and doc.images == (DEMO_IMAGE,)


def test_no_init_data_gives_empty_claims_with_measured_images() -> None:
    """Without init-data (not required) only the measured images are claimed."""
    claims = workload_claims(MRCONFIGID, bytes(48), b"", required=False,
                             measured_register="RTMR3", measured_images=(IMAGE_A,))
    assert claims.name is None and claims.init_data_register is None
    assert claims.measured_images == (IMAGE_A,)
    assert workload_claims(HOST_DATA, bytes(32), b"", required=False, measured_register=None,
                           measured_images=()) == NO_WORKLOAD


def test_required_but_absent_is_measurement() -> None:
    """require_init_data without a document is MEASUREMENT, rule workload.require_init_data."""
    with pytest.raises(MeasurementMismatch) as exc:
        workload_claims(HOST_DATA, bytes(32), b"", required=True, measured_register=None,
                        measured_images=())
    assert exc.value.rule == "workload.require_init_data" and exc.value.actual == "no init-data"


@pytest.mark.parametrize("required", [True, False])
def test_unbound_document_is_never_parsed(required: bool) -> None:
    """A document the register does not commit to is MEASUREMENT even when it is not valid
    TOML: binding is checked before parsing."""
    for doc in (DOC, b"\xff not toml"):
        with pytest.raises(MeasurementMismatch) as exc:
            workload_claims(HOST_DATA, bytes(32), doc, required=required,
                            measured_register=None, measured_images=())
        assert exc.value.rule == "workload.require_init_data"
        assert exc.value.actual == f"HOST_DATA = {'00' * 32}"


@pytest.mark.parametrize("doc", [
    b"\xff\xfe",
    b"not = [toml",
    b'name = "demo"\n',
    b'[workload]\nimages = []\n',
    b'[workload]\nname = 3\n',
    b'[workload]\nname = "demo!"\n',
    b'[workload]\nname = "demo"\nextra = 1\n',
    b'[workload]\nname = "demo"\nimages = ["sha256:ABC"]\n',
    b'[workload]\nname = "demo"\nimages = "sha256:' + b"a" * 64 + b'"\n',
    b'[workload]\nname = "demo"\n[agent]\npolicy_digest = "sha256:' + b"a" * 64 + b'"\n',
    b'[workload]\nname = "demo"\n[agent]\npolicy = "p"\npolicy_digest = "md5:00"\n',
    b'[workload]\nname = "demo"\n[extra]\n',
    b'workload = "demo"\n',
    b"[workload]\nname = \"demo\"\n#" + b"x" * (64 * 1024),
])
def test_bound_but_malformed_document(doc: bytes) -> None:
    """A bound document outside the format is MALFORMED (rule workload.init_data)."""
    with pytest.raises(Malformed) as exc:
        bound(doc)
    assert exc.value.rule == "workload.init_data"


@settings(max_examples=200, deadline=None)
@given(doc=st.binary(min_size=1, max_size=200) | st.text(min_size=1, max_size=200).map(str.encode))
def test_any_bound_bytes_are_claims_or_malformed(doc: bytes) -> None:
    """Arbitrary bound bytes give workload claims or MALFORMED, never another error."""
    try:
        claims = bound(doc)
    except Malformed:
        return
    assert WorkloadClaims.from_dict(claims.as_dict()) == claims


def test_as_dict_has_every_key_and_round_trips() -> None:
    """as_dict always has all eight keys; from_dict is its inverse."""
    for claims in (NO_WORKLOAD, bound(), bound(measured=(IMAGE_B, IMAGE_A))):
        doc = claims.as_dict()
        assert len(doc) == 8
        assert WorkloadClaims.from_dict(doc) == claims


@pytest.mark.parametrize(("key", "value"), [
    ("name", 3), ("images", "x"), ("images", ["sha256:00"]), ("init_data_digest", None),
    ("measured_register", "rtmr3"), ("agent_policy_digest", "x"), ("extra", 1)])
def test_from_dict_is_strict(key: str, value: object) -> None:
    """Wrong types, bad digests, a digest without its register and unknown keys are
    MALFORMED (rule claims.schema)."""
    doc = bound().as_dict()
    doc[key] = value
    with pytest.raises(Malformed) as exc:
        WorkloadClaims.from_dict(doc)
    assert exc.value.rule == "claims.schema"
    missing = bound().as_dict()
    del missing["images"]
    with pytest.raises(Malformed):
        WorkloadClaims.from_dict(missing)


def deny(claims: WorkloadClaims, policy: WorkloadPolicy) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        check_workload(claims, policy)
    return exc.value


def test_require_init_data_on_recorded_claims() -> None:
    """check_workload itself refuses claims without init-data when the policy requires it."""
    err = deny(NO_WORKLOAD, WorkloadPolicy(require_init_data=True))
    assert err.category is Category.MEASUREMENT and err.rule == "workload.require_init_data"
    check_workload(bound(), WorkloadPolicy(require_init_data=True))
    check_workload(NO_WORKLOAD, WorkloadPolicy())


def test_names_allow_list() -> None:
    """A name outside the allow-list, or no name at all, is MEASUREMENT rule workload.names."""
    err = deny(bound(), WorkloadPolicy(names=frozenset({"other", "third"})))
    assert err.category is Category.MEASUREMENT and err.rule == "workload.names"
    assert (err.expected, err.actual) == ("other, third", "demo")
    err = deny(NO_WORKLOAD, WorkloadPolicy(names=frozenset({"demo"})))
    assert err.actual == "none"
    assert deny(bound(), WorkloadPolicy(names=frozenset())).rule == "workload.names"
    check_workload(bound(), WorkloadPolicy(names=frozenset({"demo"})))


def test_approved_images() -> None:
    """Every declared and measured image must be approved; no image at all never passes."""
    approved = WorkloadPolicy(approved_images=frozenset({IMAGE_A}))
    check_workload(bound(), approved)
    check_workload(bound(measured=(IMAGE_A,)), approved)
    err = deny(bound(measured=(IMAGE_A, IMAGE_B)), approved)
    assert err.category is Category.MEASUREMENT and err.rule == "workload.approved_images"
    assert err.actual == IMAGE_B and "measured" in err.reason
    declared = bound(b'[workload]\nname = "x"\nimages = ["' + IMAGE_B.encode() + b'"]\n',
                     measured=(IMAGE_A,))
    err = deny(declared, approved)
    assert err.actual == IMAGE_B and "declared" in err.reason
    err = deny(bound(b'[workload]\nname = "x"\n'), approved)
    assert err.rule == "workload.approved_images" and err.actual == "no images"
    assert deny(bound(), WorkloadPolicy(approved_images=frozenset())).actual == IMAGE_A


def test_check_binding_of_recorded_claims() -> None:
    """Claims that say they were bound must name the evidence's register and value."""
    claims = bound()
    value = hashlib.sha256(DOC).digest()
    check_binding(claims, HOST_DATA, value)
    check_binding(NO_WORKLOAD, None, b"")
    for register, actual in ((HOST_DATA, bytes(32)), (MRCONFIGID, hashlib.sha384(DOC).digest())):
        with pytest.raises(MeasurementMismatch) as exc:
            check_binding(claims, register, actual)
        assert exc.value.rule == "workload.require_init_data"
    with pytest.raises(MeasurementMismatch):
        check_binding(claims, None, b"")
