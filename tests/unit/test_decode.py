"""Decoding one log line: a catalogue of bad input, accepted forms and properties (SPEC §1-§3)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.events import (
    Event,
    Invalid,
    Unknown,
    _decode_by_rules,
    _decode_well_formed,
    _may_hold_nul,
    _timestamp_shaped,
    decode,
)
from tests.helpers import ev

MIB = 1024 * 1024

# semantics.md, "Validation and quarantine": the documented reason codes.
REASONS = frozenset(
    {
        "line_too_long",
        "invalid_json",
        "invalid_utf8",
        "lone_surrogate",
        "nul_character",
        "too_deep",
        "not_an_object",
        "missing_field",
        "invalid_event_name",
        "invalid_event_id",
        "invalid_aggregate_type",
        "invalid_aggregate_id",
        "invalid_occurred_at",
        "invalid_actor",
        "invalid_version",
        "invalid_idempotency_key",
        "aggregate_type_mismatch",
        "aggregate_id_mismatch",
        "invalid_payload",
        "invalid_field",
        "invalid_kind",
        "invalid_status",
        "invalid_participant_ids",
        "invalid_changed_fields",
        "forbidden_change",
        "unknown_event",
    }
)

# The seed's 21 event names, each with fields that make a valid event of it.
VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "CustomerCreated": {"name": "Acme"},
    "CustomerUpdated": {"changed_fields": {"name": "Acme Ltd"}},
    "CustomerEnabled": {},
    "CustomerDisabled": {"reason": "unpaid"},
    "ContactCreated": {"display_name": "Ann"},
    "ContactUpdated": {"changed_fields": {"display_name": "Anne"}},
    "ContactDeleted": {},
    "ProviderConfigured": {"kind": "sms"},
    "ProviderUpdated": {"changed_fields": {"kind": "email"}},
    "ProviderEnabled": {},
    "ProviderDisabled": {"reason": None},
    "ChannelMapped": {
        "kind": "sms",
        "address": "+1 555 0100",
        "normalized": "15550100",
        "provider_id": "prv_1",
    },
    "ChannelUpdated": {"changed_fields": ["address"], "address": "+1 555 0101"},
    "ChannelUnmapped": {},
    "ConversationCreated": {
        "channel_id": "chn_1",
        "contact_id": "con_1",
        "status": "open",
        "topic": None,
        "participant_ids": ["usr_1"],
    },
    "ConversationUpdated": {"changed_fields": {"topic": "billing"}},
    "ConversationClosed": {},
    "ConversationReopened": {},
    "ConversationParticipantAdded": {"participant_id": "usr_1"},
    "ConversationParticipantRemoved": {"participant_id": "usr_1"},
    "ConversationArchived": {"reason": "done"},
}
AGGREGATE_IDS = {
    "Customer": "cus_1",
    "Contact": "con_1",
    "Provider": "prv_1",
    "Channel": "chn_1",
    "Conversation": "cnv_1",
}
ID_FIELDS = {
    "Customer": "customer_id",
    "Contact": "contact_id",
    "Provider": "provider_id",
    "Channel": "channel_id",
    "Conversation": "conversation_id",
}
ENVELOPE = (
    "event_name",
    "event_id",
    "aggregate_type",
    "aggregate_id",
    "occurred_at",
    "actor",
    "version",
    "idempotency_key",
)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DROP: Any = _Marker("DROP")  # remove the field
UNCHECKED: Any = _Marker("UNCHECKED")  # the contract does not fix this value


def family_of(name: str) -> str:
    """The aggregate type an event name belongs to (its prefix, as in the seed)."""
    return next(t for t in AGGREGATE_IDS if name.startswith(t))


def _apply(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is DROP:
            target.pop(key, None)
        else:
            target[key] = value


def good(event_name: str = "CustomerCreated", /, **payload: Any) -> dict[str, Any]:
    """A valid event of `event_name` with id evt_bad, payload fields replaced (DROP removes)."""
    family = family_of(event_name)
    fields = VALID_PAYLOADS[event_name]
    event = ev(event_name, AGGREGATE_IDS[family], event_id="evt_bad", **fields)
    _apply(event["payload"], payload)
    return event


def env(event_name: str = "CustomerCreated", /, **envelope: Any) -> dict[str, Any]:
    """A valid event of `event_name` with envelope fields replaced (DROP removes one)."""
    event = good(event_name)
    _apply(event, envelope)
    return event


def dump(document: Any) -> bytes:
    """Compact JSON text; non-ASCII and NUL are written as \\u escapes."""
    return json.dumps(document, separators=(",", ":")).encode()


def splice(document: dict[str, Any], token: bytes) -> bytes:
    """The document's JSON with the string "@@" replaced by raw JSON text."""
    text = dump(document)
    assert text.count(b'"@@"') == 1
    return text.replace(b'"@@"', token)


def nested(levels: int, leaf: Any = "x") -> Any:
    """`levels` objects nested inside each other around `leaf`."""
    value = leaf
    for _ in range(levels):
        value = {"k": value}
    return value


def nested_lists(levels: int, leaf: Any = "x") -> Any:
    """`levels` lists nested inside each other around `leaf`."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def padded_to(size: int) -> bytes:
    """A valid event line whose name is padded so the line is exactly `size` bytes."""
    base = dump(good(name="@@"))
    padding = size - (len(base) - len(b'"@@"')) - len(b'""')
    return base.replace(b'"@@"', b'"' + b"y" * padding + b'"')


def documented_raw(line: bytes) -> str:
    """The raw text as semantics.md promises it: invalid bytes as \\xNN, NUL as \\u0000."""
    return line.decode("utf-8", errors="backslashreplace").replace("\x00", "\\u0000")


def assert_storable(text: str) -> None:
    """Text that any text column takes: no NUL, no lone surrogate."""
    assert "\x00" not in text
    text.encode("utf-8")  # raises on a lone surrogate


@dataclass(frozen=True)
class Bad:
    """One kind of bad input and what decode must say about it."""

    id: str
    line: bytes
    reason: str
    event_id: str | None = "evt_bad"
    event_name: str | None = "CustomerCreated"
    raw: str | None = None  # None: documented_raw(line)

    @property
    def expected_raw(self) -> str:
        return self.raw if self.raw is not None else documented_raw(self.line)


def _not_json(id: str, line: bytes, reason: str, raw: str | None = None) -> Bad:
    return Bad(id, line, reason, event_id=None, event_name=None, raw=raw)


def _bad(id: str, document: dict[str, Any], reason: str, **expected: Any) -> Bad:
    defaults = {"event_name": document.get("event_name")}
    return Bad(id, dump(document), reason, **{**defaults, **expected})


_caf_e9 = splice(good(name="@@"), b'"caf\xe9"')
_surrogate_bytes = splice(good(name="@@"), b'"\xed\xa0\x80"')
_overlong = splice(good(name="@@"), b'"\xc0\xaf"')
_big = dump(good(name="x" * (2 * MIB)))
_just_over = padded_to(MIB + 1)
_too_deep_2000 = b'{"a":' * 2000 + b"1" + b"}" * 2000

CASES: list[Bad] = [
    # Not JSON at all.
    _not_json(
        "truncated_json", b'{"event_name":"CustomerCreated","event_id":"evt_bad"', "invalid_json"
    ),
    _not_json("trailing_garbage", dump(good()) + b" x", "invalid_json"),
    _not_json("two_objects_on_one_line", dump(good()) + dump(good()), "invalid_json"),
    _not_json("single_quotes", b"{'event_id': 'evt_bad'}", "invalid_json"),
    _not_json("nan", splice(good(name="@@"), b"NaN"), "invalid_json"),
    _not_json("infinity", splice(env(version="@@"), b"Infinity"), "invalid_json"),
    _not_json("minus_infinity", splice(env(version="@@"), b"-Infinity"), "invalid_json"),
    _not_json(
        "invalid_utf8_byte",
        _caf_e9,
        "invalid_utf8",
        raw=_caf_e9.replace(b"\xe9", b"\\xe9").decode("ascii"),
    ),
    _not_json(
        "utf8_encoded_surrogate",
        _surrogate_bytes,
        "invalid_utf8",
        raw=_surrogate_bytes.replace(b"\xed\xa0\x80", b"\\xed\\xa0\\x80").decode("ascii"),
    ),
    _not_json(
        "overlong_utf8",
        _overlong,
        "invalid_utf8",
        raw=_overlong.replace(b"\xc0\xaf", b"\\xc0\\xaf").decode("ascii"),
    ),
    _not_json("lone_high_surrogate", splice(good(name="@@"), b'"\\ud800"'), "lone_surrogate"),
    _not_json(
        "lone_low_surrogate_in_key", splice(good(**{"@@": 1}), b'"\\udc00"'), "lone_surrogate"
    ),
    _not_json(
        "reversed_surrogate_pair", splice(good(name="@@"), b'"\\ude00\\ud83d"'), "lone_surrogate"
    ),
    _not_json("too_deep_for_the_parser", _too_deep_2000, "too_deep"),
    Bad("line_of_2_mib", _big, "line_too_long", event_id=UNCHECKED, event_name=UNCHECKED),
    Bad(
        "line_one_byte_over_1_mib",
        _just_over,
        "line_too_long",
        event_id=UNCHECKED,
        event_name=UNCHECKED,
    ),
    # JSON, but not an object.
    _not_json("array", b"[1, 2]", "not_an_object"),
    _not_json("array_holding_an_event", dump([good()]), "not_an_object"),
    _not_json("json_string", b'"CustomerCreated"', "not_an_object"),
    _not_json("json_number", b"42", "not_an_object"),
    _not_json("json_null", b"null", "not_an_object"),
    _not_json("json_true", b"true", "not_an_object"),
    # NUL characters and nesting inside an object.
    _bad("nul_in_a_value", good(name="a\x00b"), "nul_character"),
    _bad("nul_in_a_key", good(**{"na\x00me": "x"}), "nul_character"),
    _bad("nul_in_event_id", env(event_id="evt\x00"), "nul_character", event_id=None),
    _bad(
        "nul_in_event_name", env(event_name="Customer\x00Created"), "nul_character", event_name=None
    ),
    _bad("nul_deep_in_actor", env(actor={"a": [{"b": "\x00"}]}), "nul_character"),
    _bad("nesting_65_deep", env(actor=nested(64)), "too_deep"),
    _bad("arrays_65_deep", env(actor={"a": nested_lists(63)}), "too_deep"),
    # event_name
    _bad("missing_event_name", env(event_name=DROP), "missing_field"),
    _bad("empty_event_name", env(event_name=""), "invalid_event_name", event_name=None),
    _bad(
        "event_name_not_a_string",
        env(event_name=["CustomerCreated"]),
        "invalid_event_name",
        event_name=None,
    ),
    # event_id
    _bad("missing_event_id", env(event_id=DROP), "missing_field", event_id=None),
    _bad("empty_event_id", env(event_id=""), "invalid_event_id", event_id=None),
    _bad(
        "event_id_129_characters", env(event_id="e" * 129), "invalid_event_id", event_id=UNCHECKED
    ),
    _bad("event_id_a_number", env(event_id=17), "invalid_event_id", event_id=None),
    # aggregate_type
    _bad("missing_aggregate_type", env(aggregate_type=DROP), "missing_field"),
    _bad("empty_aggregate_type", env(aggregate_type=""), "invalid_aggregate_type"),
    _bad("aggregate_type_a_number", env(aggregate_type=1), "invalid_aggregate_type"),
    _bad(
        "aggregate_type_of_another_family", env(aggregate_type="Contact"), "aggregate_type_mismatch"
    ),
    _bad("aggregate_type_unknown", env(aggregate_type="Invoice"), "aggregate_type_mismatch"),
    _bad("aggregate_type_plural", env(aggregate_type="Customers"), "aggregate_type_mismatch"),
    # aggregate_id
    _bad("missing_aggregate_id", env(aggregate_id=DROP), "missing_field"),
    _bad("empty_aggregate_id", env(aggregate_id=""), "invalid_aggregate_id"),
    _bad("aggregate_id_a_number", env(aggregate_id=1), "invalid_aggregate_id"),
    _bad("aggregate_id_differs_from_payload", env(aggregate_id="cus_2"), "aggregate_id_mismatch"),
    _bad("aggregate_id_differs_in_case", env(aggregate_id="CUS_1"), "aggregate_id_mismatch"),
    _bad(
        "aggregate_id_differs_from_contact_id",
        env("ContactCreated", aggregate_id="cus_1"),
        "aggregate_id_mismatch",
    ),
    # occurred_at
    _bad("missing_occurred_at", env(occurred_at=DROP), "missing_field"),
    _bad("naive_occurred_at", env(occurred_at="2025-01-01T10:00:00"), "invalid_occurred_at"),
    _bad("plus_two_hours", env(occurred_at="2025-01-01T10:00:00+02:00"), "invalid_occurred_at"),
    _bad("minus_five_hours", env(occurred_at="2025-01-01T10:00:00-05:00"), "invalid_occurred_at"),
    _bad("minus_zero_offset", env(occurred_at="2025-01-01T10:00:00-00:00"), "invalid_occurred_at"),
    _bad("impossible_date", env(occurred_at="2025-02-30T10:00:00Z"), "invalid_occurred_at"),
    _bad("month_13", env(occurred_at="2025-13-01T10:00:00Z"), "invalid_occurred_at"),
    _bad("hour_25", env(occurred_at="2025-01-01T25:00:00Z"), "invalid_occurred_at"),
    _bad("date_only", env(occurred_at="2025-01-01"), "invalid_occurred_at"),
    _bad("empty_fraction", env(occurred_at="2025-01-01T10:00:00.Z"), "invalid_occurred_at"),
    _bad(
        "ten_fraction_digits",
        env(occurred_at="2025-01-01T10:00:00.1234567890Z"),
        "invalid_occurred_at",
    ),
    _bad("non_ascii_digits", env(occurred_at="٢٠٢٥-01-01T10:00:00Z"), "invalid_occurred_at"),
    _bad("occurred_at_empty", env(occurred_at=""), "invalid_occurred_at"),
    _bad("occurred_at_epoch_number", env(occurred_at=1735725600), "invalid_occurred_at"),
    _bad("occurred_at_null", env(occurred_at=None), "invalid_occurred_at"),
    # actor
    _bad("missing_actor", env(actor=DROP), "missing_field"),
    _bad("empty_actor", env(actor=""), "invalid_actor"),
    _bad("actor_a_number", env(actor=7), "invalid_actor"),
    _bad("actor_a_list", env(actor=["user:1"]), "invalid_actor"),
    _bad("actor_null", env(actor=None), "invalid_actor"),
    # version
    _bad("missing_version", env(version=DROP), "missing_field"),
    _bad("version_0", env(version=0), "invalid_version"),
    _bad("version_negative", env(version=-1), "invalid_version"),
    _bad("version_a_string", env(version="1"), "invalid_version"),
    _bad("version_1_5", env(version=1.5), "invalid_version"),
    _bad("version_1_0", env(version=1.0), "invalid_version"),
    _bad("version_true", env(version=True), "invalid_version"),
    _bad("version_null", env(version=None), "invalid_version"),
    _bad("version_a_list", env(version=[1]), "invalid_version"),
    _bad("version_over_64_bits_signed", env(version=2**63), "invalid_version"),
    _bad("version_over_64_bits", env(version=2**64), "invalid_version"),
    # idempotency_key
    _bad("empty_idempotency_key", env(idempotency_key=""), "invalid_idempotency_key"),
    _bad("idempotency_key_a_number", env(idempotency_key=5), "invalid_idempotency_key"),
    _bad("idempotency_key_an_object", env(idempotency_key={}), "invalid_idempotency_key"),
    # An unknown name does not excuse a broken envelope.
    _bad(
        "unknown_event_with_string_version",
        env(event_name="InvoicePaid", version="1"),
        "invalid_version",
    ),
    # payload
    _bad("payload_a_list", env(payload=[{"customer_id": "cus_1", "name": "A"}]), "invalid_payload"),
    _bad("payload_a_string", env(payload="customer_id=cus_1"), "invalid_payload"),
    _bad("payload_null", env(payload=None), "invalid_payload"),
    _bad("data_a_number", env(payload=DROP, data=5), "invalid_payload"),
    # Required payload fields.
    _bad(
        "channel_mapped_without_normalized", good("ChannelMapped", normalized=DROP), "missing_field"
    ),
    _bad("customer_created_without_name", good(name=DROP), "missing_field"),
    _bad("payload_without_its_id", good(customer_id=DROP), "missing_field"),
    _bad(
        "contact_created_without_customer_id",
        good("ContactCreated", customer_id=DROP),
        "missing_field",
    ),
    _bad(
        "conversation_created_without_status",
        good("ConversationCreated", status=DROP),
        "missing_field",
    ),
    _bad(
        "updated_without_changed_fields",
        good("CustomerUpdated", changed_fields=DROP),
        "missing_field",
    ),
    _bad(
        "participant_added_without_participant",
        good("ConversationParticipantAdded", participant_id=DROP),
        "missing_field",
    ),
    _bad("empty_name", good(name=""), "invalid_field"),
    _bad("name_a_number", good(name=5), "invalid_field"),
    _bad("name_null", good(name=None), "invalid_field"),
    _bad("empty_address", good("ChannelMapped", address=""), "invalid_field"),
    _bad("empty_customer_id", good("ContactCreated", customer_id=""), "invalid_field"),
    _bad("empty_payload_id", good(customer_id=""), "invalid_field"),
    _bad(
        "empty_participant_id",
        good("ConversationParticipantRemoved", participant_id=""),
        "invalid_field",
    ),
    _bad("reason_a_number", good("CustomerDisabled", reason=5), "invalid_field"),
    _bad("display_name_a_list", good("ContactCreated", display_name=["Ann"]), "invalid_field"),
    _bad("topic_an_object", good("ConversationCreated", topic={"en": "hi"}), "invalid_field"),
    # Kinds, statuses, participants.
    _bad("provider_kind_fax", good("ProviderConfigured", kind="fax"), "invalid_kind"),
    _bad("provider_kind_empty", good("ProviderConfigured", kind=""), "invalid_kind"),
    _bad("channel_kind_voice", good("ChannelMapped", kind="voice"), "invalid_kind"),
    _bad("channel_kind_a_number", good("ChannelMapped", kind=1), "invalid_kind"),
    _bad(
        "conversation_status_pending",
        good("ConversationCreated", status="pending"),
        "invalid_status",
    ),
    _bad("conversation_status_null", good("ConversationCreated", status=None), "invalid_status"),
    _bad(
        "participant_ids_a_string",
        good("ConversationCreated", participant_ids="usr_1"),
        "invalid_participant_ids",
    ),
    _bad(
        "participant_ids_with_empty",
        good("ConversationCreated", participant_ids=["usr_1", ""]),
        "invalid_participant_ids",
    ),
    _bad(
        "participant_ids_with_number",
        good("ConversationCreated", participant_ids=["usr_1", 2]),
        "invalid_participant_ids",
    ),
    _bad(
        "participant_ids_null",
        good("ConversationCreated", participant_ids=None),
        "invalid_participant_ids",
    ),
    # changed_fields
    _bad(
        "changed_fields_empty_object",
        good("CustomerUpdated", changed_fields={}),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_fields_empty_list",
        good("CustomerUpdated", changed_fields=[]),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_fields_a_string",
        good("CustomerUpdated", changed_fields="name"),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_fields_a_number",
        good("CustomerUpdated", changed_fields=1),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_fields_null",
        good("CustomerUpdated", changed_fields=None),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_list_names_absent_field",
        good("CustomerUpdated", changed_fields=["name"]),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_list_holds_a_number",
        good("CustomerUpdated", changed_fields=[5]),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_list_holds_empty_name",
        good("CustomerUpdated", changed_fields=[""]),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_name_a_number",
        good("CustomerUpdated", changed_fields={"name": 5}),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_address_a_list",
        good("ChannelUpdated", changed_fields={"address": ["x"]}),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_topic_true",
        good("ConversationUpdated", changed_fields={"topic": True}),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_list_value_a_number",
        good("ContactUpdated", changed_fields=["display_name"], display_name=5),
        "invalid_changed_fields",
    ),
    _bad(
        "changed_provider_kind_fax",
        good("ProviderUpdated", changed_fields={"kind": "fax"}),
        "invalid_kind",
    ),
    _bad(
        "changed_channel_kind_voice",
        good("ChannelUpdated", changed_fields={"kind": "voice"}),
        "invalid_kind",
    ),
    _bad(
        "changed_channel_kind_null",
        good("ChannelUpdated", changed_fields={"kind": None}),
        "invalid_kind",
    ),
    _bad(
        "changed_own_customer_id",
        good("CustomerUpdated", changed_fields={"customer_id": "cus_2"}),
        "forbidden_change",
    ),
    _bad(
        "changed_own_contact_id",
        good("ContactUpdated", changed_fields={"contact_id": "con_2"}),
        "forbidden_change",
    ),
    _bad(
        "changed_contact_owner",
        good("ContactUpdated", changed_fields={"customer_id": "cus_2"}),
        "forbidden_change",
    ),
    _bad(
        "changed_channel_id",
        good("ChannelUpdated", changed_fields={"channel_id": "chn_2"}),
        "forbidden_change",
    ),
    _bad(
        "changed_conversation_id",
        good("ConversationUpdated", changed_fields={"conversation_id": "cnv_2"}),
        "forbidden_change",
    ),
    _bad(
        "changed_provider_status",
        good("ProviderUpdated", changed_fields={"status": "enabled"}),
        "forbidden_change",
    ),
    _bad(
        "changed_status_by_list",
        good("ConversationUpdated", changed_fields=["status"], status="closed"),
        "forbidden_change",
    ),
]


def test_the_catalogue_covers_every_documented_reason() -> None:
    """Every documented reason but unknown_event (strict only) has at least one case here."""
    assert {case.reason for case in CASES} == REASONS - {"unknown_event"}


def test_the_catalogue_ids_are_unique() -> None:
    """No two cases share an id, so a failure names exactly one kind of bad input."""
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_is_invalid_with_its_reason(case: Bad) -> None:
    """Each kind of bad input decodes to Invalid with its documented reason and a message."""
    result = decode(7, case.line)
    assert isinstance(result, Invalid), result
    assert (result.reason, result.position) == (case.reason, 7)
    assert result.message


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_keeps_its_raw_text_storable(case: Bad) -> None:
    """Invalid.raw is the line, invalid bytes as \\xNN and NUL as \\u0000, storable anywhere."""
    result = decode(7, case.line)
    assert isinstance(result, Invalid)
    assert result.raw == case.expected_raw
    assert_storable(result.raw)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_keeps_the_ids_it_could_read(case: Bad) -> None:
    """Invalid carries event_id and event_name when they were readable, None otherwise."""
    result = decode(7, case.line)
    assert isinstance(result, Invalid)
    if case.event_id is not UNCHECKED:
        assert result.event_id == case.event_id
    if case.event_name is not UNCHECKED:
        assert result.event_name == case.event_name


def test_a_raw_nul_byte_is_stored_escaped() -> None:
    """A raw NUL byte on the line (never valid JSON) is stored escaped as \\u0000."""
    line = splice(good(name="@@"), b'"a\x00b"')
    result = decode(1, line)
    assert isinstance(result, Invalid)
    # A raw control character is invalid JSON and a NUL: either reason is honest.
    assert result.reason in {"invalid_json", "nul_character"}
    assert result.raw == line.decode().replace("\x00", "\\u0000")
    assert_storable(result.raw)


def test_a_raw_nul_byte_and_an_invalid_byte_are_both_escaped() -> None:
    """A line with a NUL byte and a non-UTF-8 byte stores both escaped."""
    result = decode(1, b'{"a":"\x00\xff"}')
    assert isinstance(result, Invalid)
    assert result.raw == '{"a":"\\u0000\\xff"}'


# Accepted input.


def test_the_seed_names_twenty_one_events() -> None:
    """The test catalogue of valid payloads covers exactly the seed's 21 names."""
    assert len(VALID_PAYLOADS) == 21


@pytest.mark.parametrize("name", sorted(VALID_PAYLOADS))
def test_each_seed_event_with_its_fields_is_an_event(name: str) -> None:
    """Every one of the 21 names with its required fields decodes to an Event of its family."""
    result = decode(3, dump(good(name)))
    assert isinstance(result, Event), result
    assert result.name == name
    assert result.family.aggregate_type == family_of(name)
    assert result.aggregate_id == AGGREGATE_IDS[family_of(name)]
    assert result.fields[ID_FIELDS[family_of(name)]] == result.aggregate_id


def test_an_event_carries_its_envelope() -> None:
    """position, event_id, aggregate_id, occurred_at, version and idempotency_key are read."""
    document = env(
        version=4,
        idempotency_key="idem-1",
        occurred_at="2025-03-04T05:06:07Z",
        event_id="01JABCDEF",
    )
    result = decode(12, dump(document))
    assert isinstance(result, Event)
    assert result.position == 12
    assert result.event_id == "01JABCDEF"
    assert result.aggregate_id == "cus_1"
    assert result.version == 4
    assert result.idempotency_key == "idem-1"
    assert result.occurred_at == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert result.fields == {"customer_id": "cus_1", "name": "Acme"}


def test_idempotency_key_is_optional() -> None:
    """An event without idempotency_key is valid and carries None."""
    result = decode(1, dump(env(idempotency_key=DROP)))
    assert isinstance(result, Event)
    assert result.idempotency_key is None


def test_data_is_an_alias_of_payload() -> None:
    """Fields under `data` are read like fields under `payload`."""
    document = env("ChannelMapped")
    document["data"] = document.pop("payload")
    result = decode(1, dump(document))
    assert isinstance(result, Event), result
    assert result.fields["normalized"] == "15550100"
    assert result.fields["provider_id"] == "prv_1"


def test_fields_are_read_from_the_top_level_without_payload() -> None:
    """With neither payload nor data, the family's fields are read from the top level."""
    document = env("ConversationCreated")
    document.update(document.pop("payload"))
    result = decode(1, dump(document))
    assert isinstance(result, Event), result
    assert result.fields["status"] == "open"
    assert result.fields["contact_id"] == "con_1"
    assert result.fields["participant_ids"] == ["usr_1"]


def test_top_level_fields_are_checked_too() -> None:
    """Top-level fields obey the same rules: a bad kind there is invalid_kind."""
    document = env("ProviderConfigured")
    document.update(document.pop("payload"), kind="fax")
    result = decode(1, dump(document))
    assert isinstance(result, Invalid)
    assert result.reason == "invalid_kind"


@pytest.mark.parametrize("spelling", ["customer", "CUSTOMER", "cUsToMeR"])
def test_aggregate_type_is_case_insensitive(spelling: str) -> None:
    """aggregate_type matches its family whatever its case."""
    result = decode(1, dump(env(aggregate_type=spelling)))
    assert isinstance(result, Event), result
    assert result.family.aggregate_type == "Customer"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-01T12:30:45Z", datetime(2025, 6, 1, 12, 30, 45, tzinfo=UTC)),
        ("2025-06-01T12:30:45+00:00", datetime(2025, 6, 1, 12, 30, 45, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2025-06-01T12:30:45.5Z", datetime(2025, 6, 1, 12, 30, 45, 500000, tzinfo=UTC)),
        ("2025-06-01T12:30:45.12Z", datetime(2025, 6, 1, 12, 30, 45, 120000, tzinfo=UTC)),
        ("2025-06-01T12:30:45.123Z", datetime(2025, 6, 1, 12, 30, 45, 123000, tzinfo=UTC)),
        ("2025-06-01T12:30:45.1234Z", datetime(2025, 6, 1, 12, 30, 45, 123400, tzinfo=UTC)),
        ("2025-06-01T12:30:45.12345Z", datetime(2025, 6, 1, 12, 30, 45, 123450, tzinfo=UTC)),
        ("2025-06-01T12:30:45.123456Z", datetime(2025, 6, 1, 12, 30, 45, 123456, tzinfo=UTC)),
        ("2025-06-01T12:30:45.000001Z", datetime(2025, 6, 1, 12, 30, 45, 1, tzinfo=UTC)),
        # Beyond microseconds: digits that round and truncate alike, so either is honest.
        ("2025-06-01T12:30:45.1234564Z", datetime(2025, 6, 1, 12, 30, 45, 123456, tzinfo=UTC)),
        ("2025-06-01T12:30:45.12345640Z", datetime(2025, 6, 1, 12, 30, 45, 123456, tzinfo=UTC)),
        (
            "2025-06-01T12:30:45.123456400+00:00",
            datetime(2025, 6, 1, 12, 30, 45, 123456, tzinfo=UTC),
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_occurred_at_forms_are_accepted(text: str, expected: datetime) -> None:
    """Z and +00:00 with 0 to 9 fraction digits give the instant to the microsecond."""
    result = decode(1, dump(env(occurred_at=text)))
    assert isinstance(result, Event), result
    assert result.occurred_at == expected


def test_occurred_at_is_timezone_aware_utc() -> None:
    """The decoded occurred_at carries the UTC time zone."""
    result = decode(1, dump(env(occurred_at="2025-06-01T12:30:45+00:00")))
    assert isinstance(result, Event)
    assert result.occurred_at.utcoffset() is not None
    assert result.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


# SPEC §2's form of occurred_at, as a pattern: the decoder checks the same shape otherwise.
_SPEC_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|\+00:00)", re.ASCII)
_TIMESTAMP_CHARACTERS = "0123456789-:.TtZz+ _\n٢\ud800é"


@settings(max_examples=500)
@given(
    base=st.sampled_from(["2025-06-01T12:30:45", "2025-06-01T12:30:45.123456789"]),
    zone=st.sampled_from(["Z", "+00:00", "z", "-00:00", "+0000", ""]),
    edits=st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from(["set", "insert", "delete"])),
        max_size=3,
    ),
    character=st.sampled_from(_TIMESTAMP_CHARACTERS),
)
def test_the_timestamp_shape_is_the_spec_pattern(
    base: str, zone: str, edits: list[tuple[int, str]], character: str
) -> None:
    """Valid timestamps edited a character at a time: the shape check is the pattern."""
    text = base + zone
    for where, how in edits:
        where = min(where, len(text))
        if how == "insert":
            text = text[:where] + character + text[where:]
        elif how == "set":
            text = text[:where] + character + text[where + 1 :]
        else:
            text = text[:where] + text[where + 1 :]
    assert _timestamp_shaped(text) == (_SPEC_TIMESTAMP.fullmatch(text) is not None), text


@given(st.text(alphabet=_TIMESTAMP_CHARACTERS, max_size=40))
def test_the_timestamp_shape_refuses_what_the_pattern_refuses(text: str) -> None:
    """Any text of the characters a timestamp holds and a few more."""
    assert _timestamp_shaped(text) == (_SPEC_TIMESTAMP.fullmatch(text) is not None), text


@pytest.mark.parametrize(
    "actor", ["user:1", {"type": "service", "id": "billing", "roles": ["a", "b"]}, {}]
)
def test_actor_may_be_a_string_or_an_object(actor: Any) -> None:
    """actor is accepted as a non-empty string or any JSON object."""
    assert isinstance(decode(1, dump(env(actor=actor))), Event)


def test_an_event_id_of_128_characters_is_accepted() -> None:
    """An event_id of exactly 128 characters is valid."""
    result = decode(1, dump(env(event_id="e" * 128)))
    assert isinstance(result, Event), result
    assert result.event_id == "e" * 128


def test_an_event_id_is_counted_in_characters() -> None:
    """128 non-ASCII characters (more than 128 bytes) still make a valid event_id."""
    result = decode(1, dump(env(event_id="é" * 128)))
    assert isinstance(result, Event), result


@pytest.mark.parametrize(
    "actor",
    [
        pytest.param(nested(63), id="objects_with_a_string_inside"),
        pytest.param(nested(62, {}), id="objects_with_an_empty_object_inside"),
        pytest.param({"a": nested_lists(62)}, id="arrays"),
    ],
)
def test_nesting_64_deep_is_fine(actor: Any) -> None:
    """An event nested exactly 64 containers deep (the event itself included) is valid."""
    assert _depth({"event": actor}) == 64
    result = decode(1, dump(env(actor=actor)))
    assert isinstance(result, Event), result


def _depth(value: Any) -> int:
    """Containers nested in a JSON value (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_the_catalogue_deep_cases_are_65_deep() -> None:
    """The too_deep cases nest exactly 65 containers, one more than allowed."""
    for case in CASES:
        if case.id in ("nesting_65_deep", "arrays_65_deep"):
            assert _depth(json.loads(case.line)) == 65


def test_a_nul_deep_inside_is_still_a_nul() -> None:
    """A NUL in a string 64 containers deep is nul_character, not too_deep."""
    line = b'{"a":' * 64 + b'"\\u0000"' + b"}" * 64
    result = decode(1, line)
    assert isinstance(result, Invalid)
    assert result.reason == "nul_character"


def test_a_line_of_exactly_one_mib_is_read() -> None:
    """A valid event padded with whitespace to exactly 1 MiB is not too long."""
    line = dump(good())
    line += b" " * (MIB - len(line))
    assert len(line) == MIB
    assert isinstance(decode(1, line), Event)


def test_the_over_long_case_is_one_byte_over() -> None:
    """The catalogue's boundary case is exactly 1 MiB + 1 byte."""
    assert len(next(c for c in CASES if c.id == "line_one_byte_over_1_mib").line) == MIB + 1


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    """The text \\u0000 (an escaped backslash, then u0000) is six ordinary characters."""
    result = decode(1, dump(good(name="\\u0000")))
    assert isinstance(result, Event), result
    assert result.fields["name"] == "\\u0000"


def test_a_surrogate_pair_is_a_character() -> None:
    """A high and a low surrogate escape together make one valid character."""
    result = decode(1, splice(good(name="@@"), b'"smile \\ud83d\\ude00"'))
    assert isinstance(result, Event), result
    assert result.fields["name"] == "smile \U0001f600"


def test_a_utf8_line_with_non_ascii_text_is_read() -> None:
    """Raw UTF-8 text (not escaped) is read as such."""
    line = json.dumps(good(name="Zoë 東京"), ensure_ascii=False).encode()
    result = decode(1, line)
    assert isinstance(result, Event), result
    assert result.fields["name"] == "Zoë 東京"


def test_optional_fields_may_be_absent() -> None:
    """ConversationCreated without topic and participant_ids is valid."""
    result = decode(1, dump(good("ConversationCreated", topic=DROP, participant_ids=DROP)))
    assert isinstance(result, Event), result
    assert "participant_ids" not in result.fields


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("CustomerEnabled", "reason"),
        ("ContactCreated", "display_name"),
        ("ConversationCreated", "topic"),
    ],
)
def test_nullable_fields_accept_null(name: str, key: str) -> None:
    """reason, display_name and topic may be null."""
    result = decode(1, dump(good(name, **{key: None})))
    assert isinstance(result, Event), result
    assert result.fields[key] is None


@pytest.mark.parametrize("kind", ["sms", "mms", "email", "voice", "voicemail"])
def test_every_provider_kind_is_accepted(kind: str) -> None:
    """ProviderConfigured accepts each of the five provider kinds."""
    result = decode(1, dump(good("ProviderConfigured", kind=kind)))
    assert isinstance(result, Event), result


@pytest.mark.parametrize("status", ["open", "closed", "archived"])
def test_every_conversation_status_is_accepted(status: str) -> None:
    """ConversationCreated accepts open, closed and archived."""
    result = decode(1, dump(good("ConversationCreated", status=status)))
    assert isinstance(result, Event), result


def test_an_empty_participant_list_is_accepted() -> None:
    """participant_ids may be an empty list."""
    result = decode(1, dump(good("ConversationCreated", participant_ids=[])))
    assert isinstance(result, Event), result


def test_an_unknown_event_name_is_unknown() -> None:
    """A well-formed envelope with an unknown event_name decodes to Unknown, not Invalid."""
    result = decode(9, dump(env(event_name="InvoicePaid", event_id="evt_inv")))
    assert result == Unknown(9, "InvoicePaid", "evt_inv")


def test_an_unknown_event_may_carry_any_aggregate() -> None:
    """An unknown event's aggregate_type need not be one of the five families."""
    document = env(event_name="InvoicePaid", aggregate_type="Invoice", aggregate_id="inv_1")
    document["payload"] = {"invoice_id": "inv_1", "amount": 12.5}
    assert isinstance(decode(1, dump(document)), Unknown)


def test_an_unknown_event_is_invalid_when_strict() -> None:
    """With strict=True an unknown event_name is quarantined as unknown_event."""
    result = decode(4, dump(env(event_name="InvoicePaid", event_id="evt_inv")), strict=True)
    assert isinstance(result, Invalid)
    assert result.reason == "unknown_event"
    assert (result.event_id, result.event_name, result.position) == ("evt_inv", "InvoicePaid", 4)


def test_strict_leaves_known_events_alone() -> None:
    """strict=True changes nothing for a valid known event."""
    assert isinstance(decode(1, dump(good("ChannelMapped")), strict=True), Event)


def test_changed_fields_list_takes_values_from_the_payload() -> None:
    """A list of names picks each new value from the payload under the same name."""
    document = good(
        "ChannelUpdated", changed_fields=["address", "normalized"], normalized="15550101"
    )
    result = decode(1, dump(document))
    assert isinstance(result, Event), result
    assert result.changes == {"address": "+1 555 0101", "normalized": "15550101"}
    assert result.extra == {}


def test_changed_fields_split_columns_from_attributes() -> None:
    """Updatable keys go to changes, every other key (any JSON value) to extra."""
    changed = {"address": "+1 555 0199", "label": "Support", "priority": 3, "tags": ["a"]}
    result = decode(1, dump(good("ChannelUpdated", changed_fields=changed)))
    assert isinstance(result, Event), result
    assert result.changes == {"address": "+1 555 0199"}
    assert result.extra == {"label": "Support", "priority": 3, "tags": ["a"]}


def test_a_known_but_not_updatable_column_goes_to_attributes() -> None:
    """A conversation's channel_id is not updatable, so a change of it is kept in extra."""
    changed = {"channel_id": "chn_2"}
    result = decode(1, dump(good("ConversationUpdated", changed_fields=changed)))
    assert isinstance(result, Event), result
    assert (result.changes, result.extra) == ({}, {"channel_id": "chn_2"})


def test_a_changed_column_may_be_null() -> None:
    """A changed updatable column (other than kind) may be set to null."""
    result = decode(1, dump(good("ConversationUpdated", changed_fields={"topic": None})))
    assert isinstance(result, Event), result
    assert result.changes == {"topic": None}


@pytest.mark.parametrize(
    ("name", "kind"), [("ProviderUpdated", "voicemail"), ("ChannelUpdated", "mms")]
)
def test_a_valid_kind_change_is_a_column_change(name: str, kind: str) -> None:
    """A changed kind from the family's allowed set changes the column."""
    result = decode(1, dump(good(name, changed_fields={"kind": kind})))
    assert isinstance(result, Event), result
    assert result.changes == {"kind": kind}


def test_a_customer_kind_is_just_an_attribute() -> None:
    """Customers have no kind column, so any changed kind value goes to extra."""
    result = decode(1, dump(good("CustomerUpdated", changed_fields={"kind": "fax"})))
    assert isinstance(result, Event), result
    assert (result.changes, result.extra) == ({}, {"kind": "fax"})


# Properties.

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_finite_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
finite_json_values = st.recursive(
    _finite_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _assert_decoded(result: object) -> None:
    assert isinstance(result, Event | Unknown | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in REASONS
        assert result.message
        assert_storable(result.raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_decode_never_raises_on_arbitrary_bytes(line: bytes) -> None:
    """Any bytes at all decode to an Event, Unknown or Invalid with a documented reason."""
    _assert_decoded(decode(1, line))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_decode_never_raises_on_arbitrary_json(value: Any) -> None:
    """Any JSON-ish value, serialised (NaN and Infinity included), decodes without raising."""
    _assert_decoded(decode(1, json.dumps(value).encode()))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            key: json_values | st.sampled_from(["CustomerCreated", "Customer", "cus_1", 1])
            for key in (*ENVELOPE, "payload", "data", "customer_id", "name", "changed_fields")
        },
    )
)
def test_decode_never_raises_on_envelope_like_objects(document: dict[str, Any]) -> None:
    """Objects with random envelope and payload keys decode without raising."""
    _assert_decoded(decode(1, json.dumps(document).encode()))


_SPECIAL_VALUES = [
    DROP,
    "",
    "x",
    "e" * 128,
    "e" * 129,
    0,
    1,
    2,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    True,
    False,
    None,
    "1",
    1.5,
    1.0,
    {},
    [],
    {"id": "svc"},
    "customer",
    "CONTACT",
    "Invoice",
    "cus_1",
    "con_1",
    "InvoicePaid",
    *VALID_PAYLOADS,
    "2025-01-01T00:00:00Z",
    "2025-01-01T00:00:00.123456789+00:00",
    "2025-01-01T00:00:00+01:00",
    "2025-02-29T00:00:00Z",
    "a\x00b",
]
VALID_TIMESTAMPS = {"2025-01-01T00:00:00Z", "2025-01-01T00:00:00.123456789+00:00"}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _expected(name: str, key: str, value: Any) -> set[str]:
    """What the contract allows after setting one envelope field: outcomes and reason codes."""
    family = family_of(name)
    if value is DROP:
        return {"event"} if key == "idempotency_key" else {"missing_field"}
    if _has_nul(value):
        return {"nul_character"}
    if key == "event_name":
        if not _text(value):
            return {"invalid_event_name"}
        if value not in VALID_PAYLOADS:
            return {"unknown"}
        if family_of(value) != family:
            return {"aggregate_type_mismatch"}
        # Another name of the same family: valid, or lacking one of its own fields.
        return {"event", "missing_field"} if value != name else {"event"}
    if key == "event_id":
        return {"event"} if _text(value) and len(value) <= 128 else {"invalid_event_id"}
    if key == "aggregate_type":
        if not _text(value):
            return {"invalid_aggregate_type"}
        return {"event"} if value.lower() == family.lower() else {"aggregate_type_mismatch"}
    if key == "aggregate_id":
        if not _text(value):
            return {"invalid_aggregate_id"}
        return {"event"} if value == AGGREGATE_IDS[family] else {"aggregate_id_mismatch"}
    if key == "occurred_at":
        valid = isinstance(value, str) and value in VALID_TIMESTAMPS
        return {"event"} if valid else {"invalid_occurred_at"}
    if key == "actor":
        return {"event"} if _text(value) or isinstance(value, dict) else {"invalid_actor"}
    if key == "version":
        # A JSON integer >= 1; above 2**63 - 1 no database column can hold it.
        valid = type(value) is int and 1 <= value <= 2**63 - 1
        return {"event"} if valid else {"invalid_version"}
    assert key == "idempotency_key"
    if value is None:  # null for an optional field: absent or invalid are both honest
        return {"event", "invalid_idempotency_key"}
    return {"event"} if _text(value) else {"invalid_idempotency_key"}


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(VALID_PAYLOADS)),
    key=st.sampled_from(ENVELOPE),
    value=finite_json_values | st.sampled_from(_SPECIAL_VALUES),
)
def test_one_bad_envelope_field_gives_its_documented_reason(
    name: str, key: str, value: Any
) -> None:
    """Setting one envelope field of a valid event to any JSON value gives what SPEC §1 says."""
    document = env(name, **{key: value})
    result = decode(1, json.dumps(document).encode())
    allowed = _expected(name, key, value)
    if isinstance(result, Event):
        assert "event" in allowed, (allowed, result)
        if key in ("event_id", "version", "idempotency_key") and value is not DROP:
            assert getattr(result, key) == value
        if key == "event_name":
            assert result.name == value
    elif isinstance(result, Unknown):
        assert "unknown" in allowed, (allowed, result)
        assert result.name == value
    else:
        assert result.reason in REASONS
        assert result.reason in allowed, (allowed, result)


# The one-pass reading of well-formed lines (msgspec) and the rules read one by one (orjson)
# must give the same Event for every line the first accepts; it hands back every other.

# Raw JSON text spliced into a line: the values where two JSON readers may part ways.
RAW_VALUES = [
    b'"ok"',
    b"1",
    b"-0",
    b"1E2",
    b"0.1",
    b"4.9e-324",
    b"1e-400",
    b"1.7976931348623157e308",
    b"1.7976931348623159e308",
    b"1e400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"1" + b"0" * 400,
    b"123456789.123456789e-5",
    b"true",
    b"null",
    b'"\\ud800"',
    b'"\\ud83d\\ude00"',
    b'"\\u0000"',
    b'"\\\\u0000"',
    b'"\\u00e9"',
    b'"caf\xc3\xa9"',
    b'"\xff"',
    b'"\xed\xa0\x80"',
    b'"\xc0\xaf"',
    b'"\x7f"',
    b"[[[[1]]]]",
    b'{"a":{"b":[1,2,{"c":null}]}}',
    b'{"\xff":1}',
    b"[" * 70 + b"]" * 70,
]
# Where the value goes: under a key of the payload, of changed_fields, of the envelope,
# of an actor object, of a `data` object beside the payload, or as a second copy of an
# envelope field.
PLACES = [
    "payload",
    "changed_fields",
    "envelope",
    "actor",
    "beside",
    "again:version",
    "again:event_id",
]


def _one_pass_agrees(line: bytes) -> Event | None:
    """The one-pass Event of `line` (None when it hands the line on), checked against the rules."""
    if _may_hold_nul(line):
        return None  # decode sends such lines to the rules alone
    fast = _decode_well_formed(7, line)
    if fast is not None:
        assert repr(fast) == repr(_decode_by_rules(7, line, deep=True, strict=False))
    return fast


def _line(name: str, where: str, place: str, raw: bytes, attributes: dict[str, Any]) -> bytes:
    document = copy.deepcopy(good(name))
    payload = document.pop("payload")
    changed = payload.get("changed_fields")
    if isinstance(changed, dict):
        changed.update(attributes)
    if place == "payload":
        payload["x_extra"] = "@@"
    elif place == "changed_fields":
        payload["changed_fields"] = {**(changed if isinstance(changed, dict) else {}), "x": "@@"}
    elif place == "envelope":
        document["x_extra"] = "@@"
    elif place == "actor":
        document["actor"] = {"id": "@@"}
    elif place == "beside":
        document["payload" if where == "data" else "data"] = {"x": "@@"}
    if where == "top level":
        document.update(payload)
    else:
        document[where] = payload
    if place.startswith("again:"):
        field = place.removeprefix("again:")
        return dump(document)[:-1] + b',"' + field.encode() + b'":' + raw + b"}"
    return splice(document, raw)


@pytest.mark.parametrize("raw", RAW_VALUES)
@pytest.mark.parametrize("place", PLACES)
@settings(max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(VALID_PAYLOADS)),
    where=st.sampled_from(["payload", "data", "top level"]),
    attributes=st.dictionaries(st.text(max_size=6), finite_json_values, max_size=3),
)
def test_the_one_pass_reading_agrees_with_the_rules(
    name: str, where: str, place: str, raw: bytes, attributes: dict[str, Any]
) -> None:
    """Big and small numbers, escapes, bad UTF-8, nesting, repeated fields, anywhere."""
    _one_pass_agrees(_line(name, where, place, raw, attributes))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(VALID_PAYLOADS)),
    key=st.sampled_from(ENVELOPE),
    value=finite_json_values | st.sampled_from(_SPECIAL_VALUES),
)
def test_the_one_pass_reading_agrees_on_any_envelope_value(name: str, key: str, value: Any) -> None:
    """Whatever one envelope field holds, the one-pass reading agrees or hands the line on."""
    _one_pass_agrees(dump(env(name, **{key: value})))


@pytest.mark.parametrize("where", ["payload", "data"])
@pytest.mark.parametrize("name", sorted(VALID_PAYLOADS))
def test_the_one_pass_reading_takes_the_usual_lines(name: str, where: str) -> None:
    """Every valid event with its fields in payload or data is read in one pass (the speed
    of a rebuild depends on it), non-ASCII text, attributes and an actor object included."""
    document = copy.deepcopy(good(name))
    document[where] = document.pop("payload")
    if isinstance(changed := document[where].get("changed_fields"), dict):
        changed.update({"tier": 3, "tags": ["a", "é"], "score": 0.5, "vip": None})
    document["actor"] = {"id": "usr_1", "roles": ["admin"]}
    for line in (dump(document), orjson.dumps(document)):
        assert _one_pass_agrees(line) is not None, line
