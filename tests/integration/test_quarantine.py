"""Quarantine on both databases: bad lines are kept with position, reason and raw text (SPEC §2)."""

from __future__ import annotations

import gzip
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import Database, ev

MIB = 1024 * 1024
UNCHECKED = "<unchecked>"

# semantics.md, "Validation and quarantine".
REASONS = {
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


def dump(document: Any) -> bytes:
    """Compact JSON text; non-ASCII and NUL are written as \\u escapes."""
    return json.dumps(document, separators=(",", ":")).encode()


def splice(document: dict[str, Any], token: bytes) -> bytes:
    """The document's JSON with the string "@@" replaced by raw JSON text."""
    text = dump(document)
    assert text.count(b'"@@"') == 1
    return text.replace(b'"@@"', token)


def documented_raw(line: bytes) -> str:
    """The raw text as semantics.md promises it: invalid bytes as \\xNN, NUL as \\u0000."""
    return line.decode("utf-8", errors="backslashreplace").replace("\x00", "\\u0000")


def nested(levels: int) -> Any:
    """`levels` objects nested inside each other."""
    value: Any = "x"
    for _ in range(levels):
        value = {"k": value}
    return value


def with_envelope(event: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    """The event with envelope fields replaced."""
    return {**event, **envelope}


def with_payload(event: dict[str, Any], **payload: Any) -> dict[str, Any]:
    """The event with payload fields replaced."""
    return {**event, "payload": {**event["payload"], **payload}}


@dataclass
class Expected:
    """What one quarantined line must look like."""

    reason: str | set[str]
    raw: str
    event_id: str | None
    event_name: str | None
    raw_is_prefix: bool = False


@dataclass
class Log:
    """An NDJSON log built line by line, remembering what each line should become."""

    lines: list[bytes] = field(default_factory=list)
    bad: dict[int, Expected] = field(default_factory=dict)
    good: int = 0
    unknown: int = 0

    def add_good(self, event: dict[str, Any], ending: bytes = b"\n") -> None:
        """A valid event that must be applied."""
        self.lines.append(dump(event) + ending)
        self.good += 1

    def add_unknown(self, event: dict[str, Any]) -> None:
        """A well-formed event of a name the product does not know."""
        self.lines.append(dump(event) + b"\n")
        self.unknown += 1

    def add_blank(self, text: bytes = b"\n") -> None:
        """A blank line: skipped, but it still counts as a line."""
        assert not text.strip()
        self.lines.append(text)

    def add_bad(
        self,
        line: bytes | dict[str, Any],
        reason: str | set[str],
        *,
        event_id: str | None = None,
        event_name: str | None = None,
        ending: bytes = b"\n",
        raw_is_prefix: bool = False,
    ) -> None:
        """A line that must be quarantined with `reason` (ids as readable from the line)."""
        text = dump(line) if isinstance(line, dict) else line
        self.lines.append(text + ending)
        expected = Expected(reason, documented_raw(text), event_id, event_name, raw_is_prefix)
        self.bad[len(self.lines)] = expected

    def write(self, path: Path) -> Path:
        """Write the log (gzip-compressed when the name ends in .gz)."""
        data = b"".join(self.lines)
        if path.name.endswith(".gz"):
            path.write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
        return path


def interleaved_log() -> Log:
    """Good events of every family interleaved with many kinds of bad lines and blank lines."""
    log = Log()
    customer = ev("CustomerCreated", "cus_1", event_id="evt_c1", name="Acme")
    log.add_good(customer)
    log.add_bad(b"{not json", "invalid_json")
    log.add_blank()
    log.add_bad(
        splice(with_envelope(customer, event_id="evt_b2", version="@@"), b"NaN"), "invalid_json"
    )
    provider = ev("ProviderConfigured", "prv_1", event_id="evt_p1", kind="sms")
    log.add_good(provider)
    log.add_bad(
        splice(with_payload(provider, kind="@@"), b'"sm\xe9"'),
        "invalid_utf8",
    )
    # A raw NUL byte: no JSON text may hold one, and PostgreSQL text refuses it unescaped.
    log.add_bad(
        splice(with_payload(provider, kind="@@"), b'"s\x00ms"'), {"invalid_json", "nul_character"}
    )
    log.add_bad(
        dump(with_payload(customer, name="Ac\x00me")),
        "nul_character",
        event_id="evt_c1",
        event_name="CustomerCreated",
    )
    log.add_bad(splice(with_payload(customer, name="@@"), b'"\\ud800"'), "lone_surrogate")
    log.add_blank(b"   \n")
    channel = ev(
        "ChannelMapped",
        "chn_1",
        event_id="evt_h1",
        kind="sms",
        address="+1 555 0100",
        normalized="15550100",
        provider_id="prv_1",
    )
    channel["data"] = channel.pop("payload")  # the `data` alias
    log.add_good(channel)
    log.add_bad(
        dump(with_payload(with_envelope(customer, event_id="evt_long"), name="x" * (2 * MIB))),
        "line_too_long",
        raw_is_prefix=True,
    )
    log.add_bad(
        with_envelope(customer, event_id="evt_deep", actor=nested(64)),
        "too_deep",
        event_id="evt_deep",
        event_name="CustomerCreated",
    )
    log.add_bad(dump([customer]), "not_an_object")
    log.add_bad(b'"CustomerCreated"', "not_an_object", ending=b"\r\n")
    contact = ev("ContactCreated", "con_1", event_id="evt_n1", display_name="Ann")
    log.add_good(contact, ending=b"\r\n")
    no_id = {k: v for k, v in contact.items() if k != "event_id"}
    log.add_bad(no_id, "missing_field", event_name="ContactCreated")
    log.add_bad(
        with_envelope(contact, event_id="e" * 129),
        "invalid_event_id",
        event_name="ContactCreated",
        event_id=UNCHECKED,  # the contract does not say what an over-long id is stored as
    )
    conversation = ev(
        "ConversationCreated",
        "cnv_1",
        event_id="evt_v1",
        channel_id="chn_1",
        contact_id="con_1",
        status="open",
        participant_ids=["usr_1"],
    )
    conversation.update(conversation.pop("payload"))  # fields at the top level
    log.add_good(conversation)
    log.add_blank(b"\r\n")
    customer_v2 = ev(
        "CustomerUpdated",
        "cus_1",
        2,
        event_id="evt_c2",
        changed_fields={"name": "Acme Ltd", "tier": "gold"},
    )
    log.add_good(customer_v2)
    # Bad events aimed at existing rows: none of them may change anything.
    log.add_bad(
        ev("CustomerUpdated", "cus_1", 3, event_id="evt_x1", changed_fields={"name": 5}),
        "invalid_changed_fields",
        event_id="evt_x1",
        event_name="CustomerUpdated",
    )
    log.add_bad(
        ev(
            "CustomerUpdated",
            "cus_1",
            3,
            event_id="evt_x2",
            changed_fields={"customer_id": "cus_9"},
        ),
        "forbidden_change",
        event_id="evt_x2",
        event_name="CustomerUpdated",
    )
    log.add_bad(
        ev("ProviderUpdated", "prv_1", 2, event_id="evt_x3", changed_fields={"kind": "fax"}),
        "invalid_kind",
        event_id="evt_x3",
        event_name="ProviderUpdated",
    )
    log.add_bad(
        with_envelope(
            ev("ChannelUnmapped", "chn_1", event_id="evt_x4", reason="gone"), version="2"
        ),
        "invalid_version",
        event_id="evt_x4",
        event_name="ChannelUnmapped",
    )
    log.add_bad(
        with_envelope(ev("ChannelUnmapped", "chn_1", event_id="evt_x5"), version=2**63),
        "invalid_version",
        event_id="evt_x5",
        event_name="ChannelUnmapped",
    )
    log.add_good(
        ev("ConversationParticipantAdded", "cnv_1", 2, event_id="evt_v2", participant_id="usr_2")
    )
    log.add_good(ev("ConversationClosed", "cnv_1", 3, event_id="evt_v3", reason="done"))
    log.add_bad(
        with_envelope(
            ev("ConversationArchived", "cnv_1", 4, event_id="evt_x6"),
            occurred_at="2025-01-02T10:00:00+02:00",
        ),
        "invalid_occurred_at",
        event_id="evt_x6",
        event_name="ConversationArchived",
    )
    log.add_bad(
        with_envelope(
            ev("ConversationReopened", "cnv_1", 4, event_id="evt_x7"),
            occurred_at="2025-02-30T10:00:00Z",
        ),
        "invalid_occurred_at",
        event_id="evt_x7",
        event_name="ConversationReopened",
    )
    log.add_bad(
        with_envelope(ev("ContactDeleted", "con_1", 2, event_id="evt_x8"), actor=""),
        "invalid_actor",
        event_id="evt_x8",
        event_name="ContactDeleted",
    )
    log.add_bad(
        ev("ContactDeleted", "con_1", 2, event_id="evt_x9", idempotency_key=""),
        "invalid_idempotency_key",
        event_id="evt_x9",
        event_name="ContactDeleted",
    )
    log.add_good(
        ev(
            "ContactUpdated",
            "con_1",
            2,
            event_id="evt_n2",
            changed_fields=["display_name"],
            display_name="Anne",
        )
    )
    log.add_bad(
        with_envelope(
            ev("CustomerCreated", "cus_2", event_id="evt_y1", name="Other"),
            aggregate_type="Contact",
        ),
        "aggregate_type_mismatch",
        event_id="evt_y1",
        event_name="CustomerCreated",
    )
    log.add_bad(
        with_envelope(
            ev("CustomerCreated", "cus_2", event_id="evt_y2", name="Other"), aggregate_id="cus_3"
        ),
        "aggregate_id_mismatch",
        event_id="evt_y2",
        event_name="CustomerCreated",
    )
    log.add_bad(
        with_envelope(
            ev("CustomerCreated", "cus_2", event_id="evt_y3"), payload=["cus_2", "Other"]
        ),
        "invalid_payload",
        event_id="evt_y3",
        event_name="CustomerCreated",
        ending=b"\r\n",
    )
    log.add_bad(
        ev(
            "ChannelMapped",
            "chn_2",
            event_id="evt_y4",
            kind="sms",
            address="+1 555 0200",
            provider_id="prv_1",
        ),
        "missing_field",
        event_id="evt_y4",
        event_name="ChannelMapped",
    )
    log.add_bad(
        ev("CustomerCreated", "cus_2", event_id="evt_y5", name=""),
        "invalid_field",
        event_id="evt_y5",
        event_name="CustomerCreated",
    )
    log.add_bad(
        ev(
            "ConversationCreated",
            "cnv_2",
            event_id="evt_y6",
            channel_id="chn_1",
            contact_id="con_1",
            status="pending",
        ),
        "invalid_status",
        event_id="evt_y6",
        event_name="ConversationCreated",
    )
    log.add_bad(
        ev(
            "ConversationCreated",
            "cnv_2",
            event_id="evt_y7",
            channel_id="chn_1",
            contact_id="con_1",
            status="open",
            participant_ids="usr_9",
        ),
        "invalid_participant_ids",
        event_id="evt_y7",
        event_name="ConversationCreated",
    )
    log.add_unknown(
        ev("CustomerCreated", "cus_1", event_id="evt_u1") | {"event_name": "InvoicePaid"}
    )
    log.add_good(ev("ProviderDisabled", "prv_1", 2, event_id="evt_p2", reason="maintenance"))
    # A quarantined event is not remembered: its corrected resend, same event_id, applies.
    disabled = ev("CustomerDisabled", "cus_1", 3, event_id="evt_fix", reason="unpaid")
    log.add_bad(
        with_envelope(disabled, version="3"),
        "invalid_version",
        event_id="evt_fix",
        event_name="CustomerDisabled",
    )
    log.add_good(disabled)
    log.add_bad(b"[]", "not_an_object")  # the last event line is a bad one
    log.add_blank()
    return log


def _quarantine(database: Database) -> dict[int, dict[str, Any]]:
    rows = database.rows("quarantined_events")
    by_position = {row["position"]: row for row in rows}
    assert len(by_position) == len(rows), "one quarantine row per line"
    return by_position


def _assert_quarantined(database: Database, log: Log) -> None:
    found = _quarantine(database)
    assert sorted(found) == sorted(log.bad)
    for position, expected in log.bad.items():
        row = found[position]
        reasons = expected.reason if isinstance(expected.reason, set) else {expected.reason}
        assert row["reason"] in reasons, (position, row["reason"])
        assert row["message"], position
        if expected.raw_is_prefix:
            # A line over 1 MiB may be kept in part: enough to show it is too long.
            assert expected.raw.startswith(row["raw"]), position
            assert len(row["raw"].encode()) > MIB, position
        else:
            assert row["raw"] == expected.raw, position
        assert "\x00" not in row["raw"]
        if expected.event_id != UNCHECKED and not expected.raw_is_prefix:
            assert row["event_id"] == expected.event_id, position
        if not expected.raw_is_prefix:
            assert row["event_name"] == expected.event_name, position


def _assert_good_rows(database: Database) -> None:
    customer = database.row("customers", "cus_1")
    assert customer is not None
    assert (customer["name"], customer["status"], customer["status_reason"]) == (
        "Acme Ltd",
        "disabled",
        "unpaid",
    )
    assert customer["version"] == 3
    assert customer["attributes"] == {"tier": "gold"}
    assert customer["last_event_id"] == "evt_fix"
    assert [r["customer_id"] for r in database.rows("customers")] == ["cus_1"]

    provider = database.row("providers", "prv_1")
    assert provider is not None
    assert (provider["kind"], provider["status"], provider["status_reason"]) == (
        "sms",
        "disabled",
        "maintenance",
    )

    channels = database.rows("channel_mappings")
    assert [c["channel_id"] for c in channels] == ["chn_1"]
    assert channels[0]["status"] == "mapped"
    assert channels[0]["normalized"] == "15550100"
    assert channels[0]["provider_kind"] == "sms"

    contact = database.row("contacts", "con_1")
    assert contact is not None
    assert (contact["display_name"], contact["status"]) == ("Anne", "active")

    conversations = database.rows("conversations")
    assert [c["conversation_id"] for c in conversations] == ["cnv_1"]
    conversation = conversations[0]
    assert (conversation["status"], conversation["status_reason"]) == ("closed", "done")
    assert conversation["participant_count"] == 2
    assert conversation["channel_address"] == "15550100"
    assert conversation["contact_display_name"] == "Anne"
    participants = database.rows("conversation_participants")
    assert [(p["participant_id"], p["active"]) for p in participants] == [
        ("usr_1", True),
        ("usr_2", True),
    ]


def _assert_counters_add_up(counters: Any) -> None:
    parts = ("applied", "noop", "duplicate", "stale", "unknown", "quarantined", "rejected")
    assert counters.read == sum(getattr(counters, p) for p in parts)


def test_the_interleaved_log_has_twenty_kinds_of_bad_lines() -> None:
    """The log below holds at least 20 bad lines of at least 20 documented reasons' kinds."""
    log = interleaved_log()
    assert len(log.bad) >= 20
    kinds = {
        next(iter(e.reason)) if isinstance(e.reason, set) else e.reason for e in log.bad.values()
    }
    assert len(kinds) >= 20
    assert kinds <= REASONS


def test_bad_lines_are_quarantined_with_position_reason_and_raw(database: Database) -> None:
    """Each bad line is in quarantined_events with its line number, reason, message and raw."""
    log = interleaved_log()
    database.project(log.write(database.tmp / "log.ndjson"))
    _assert_quarantined(database, log)


def test_good_events_around_bad_lines_are_applied(database: Database) -> None:
    """Every good event of the interleaved log is applied; no bad line changes a row."""
    log = interleaved_log()
    database.project(log.write(database.tmp / "log.ndjson"))
    _assert_good_rows(database)


def test_counters_add_up(database: Database) -> None:
    """applied, unknown and quarantined count the log's lines, and read is their sum."""
    log = interleaved_log()
    result = database.project(log.write(database.tmp / "log.ndjson"), batch_size=7)
    counters = result.counters
    assert counters.applied == log.good
    assert counters.quarantined == len(log.bad)
    assert counters.unknown == log.unknown
    assert counters.read == log.good + len(log.bad) + log.unknown
    assert (counters.noop, counters.duplicate, counters.stale, counters.rejected) == (0, 0, 0, 0)
    assert counters.anomalies == 0
    _assert_counters_add_up(counters)


def test_the_checkpoint_moves_past_the_bad_lines(database: Database) -> None:
    """Every projector's checkpoint ends at the log's last physical line."""
    log = interleaved_log()
    result = database.project(log.write(database.tmp / "log.ndjson"))
    checkpoints = database.checkpoints()
    assert checkpoints
    assert set(checkpoints.values()) == {len(log.lines)}
    assert result.position == len(log.lines)


def test_a_log_of_only_bad_lines_moves_the_checkpoint(database: Database) -> None:
    """A batch with nothing but bad lines still moves every checkpoint past them."""
    lines = [b"{", b"[]", b"", b'{"event_name":"CustomerCreated"}']
    path = database.tmp / "bad.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = database.project(path)
    assert result.counters.quarantined == 3
    assert set(database.checkpoints().values()) == {4}
    assert sorted(_quarantine(database)) == [1, 2, 4]
    assert database.count("customers") == 0


def test_a_second_run_of_the_same_file_changes_nothing(database: Database) -> None:
    """Projecting the same file again applies nothing and quarantines nothing new."""
    log = interleaved_log()
    path = log.write(database.tmp / "log.ndjson")
    database.project(path)
    before = database.snapshot()
    again = database.project(path)
    assert again.counters.read == 0
    assert again.counters.applied == 0
    assert again.counters.quarantined == 0
    assert database.count("quarantined_events") == len(log.bad)
    assert database.snapshot() == before


def test_batch_size_does_not_change_the_quarantine(database: Database) -> None:
    """Batches of one line give the same quarantine and rows as one big batch."""
    log = interleaved_log()
    database.project(log.write(database.tmp / "log.ndjson"), batch_size=1)
    _assert_quarantined(database, log)
    _assert_good_rows(database)


def test_positions_count_blank_lines_and_ignore_a_trailing_cr(database: Database) -> None:
    """Blank lines are skipped but counted; a trailing \\r is not part of the line."""
    customer = ev("CustomerCreated", "cus_1", event_id="evt_1", name="Acme")
    path = database.tmp / "crlf.ndjson"
    path.write_bytes(
        b"\n"  # 1
        + b"  \t \r\n"  # 2
        + dump(customer)
        + b"\r\n"  # 3
        + b"\r\n"  # 4
        + b"{bad\r\n"  # 5
        + b"\n"  # 6
        + dump(ev("CustomerDisabled", "cus_1", 2, event_id="evt_2"))
        + b"\r\n"  # 7
    )
    result = database.project(path)
    assert (result.counters.read, result.counters.applied) == (3, 2)
    [row] = database.rows("quarantined_events")
    assert (row["position"], row["raw"]) == (5, "{bad")
    customer_row = database.row("customers", "cus_1")
    assert customer_row is not None
    assert customer_row["status"] == "disabled"
    assert set(database.checkpoints().values()) == {7}


def _unknown_log(database: Database) -> Path:
    path = database.tmp / "unknown.ndjson"
    unknown = ev("CustomerCreated", "cus_1", event_id="evt_u") | {
        "event_name": "InvoicePaid",
        "aggregate_type": "Invoice",
        "aggregate_id": "inv_1",
        "payload": {"invoice_id": "inv_1"},
    }
    path.write_bytes(
        dump(ev("CustomerCreated", "cus_1", event_id="evt_1", name="Acme"))
        + b"\n"
        + dump(unknown)
        + b"\n"
    )
    return path


def test_unknown_events_are_counted_not_quarantined(database: Database) -> None:
    """An unknown event_name with a good envelope is counted unknown and not quarantined."""
    result = database.project(_unknown_log(database))
    assert (result.counters.unknown, result.counters.quarantined) == (1, 0)
    assert result.counters.applied == 1
    assert database.count("quarantined_events") == 0
    assert set(database.checkpoints().values()) == {2}


def test_unknown_events_are_quarantined_when_strict(database: Database) -> None:
    """With strict=True an unknown event is quarantined as unknown_event with its ids."""
    result = database.project(_unknown_log(database), strict=True)
    assert (result.counters.unknown, result.counters.quarantined) == (0, 1)
    [row] = database.rows("quarantined_events")
    assert (row["position"], row["reason"]) == (2, "unknown_event")
    assert (row["event_id"], row["event_name"]) == ("evt_u", "InvoicePaid")
    assert row["message"]
    assert database.row("customers", "cus_1") is not None


def test_a_gzip_log_is_read_and_quarantined(database: Database) -> None:
    """A .gz log gives the same quarantine, rows and checkpoint as the plain file."""
    log = interleaved_log()
    path = log.write(database.tmp / "log.ndjson.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    result = database.project(path)
    assert result.counters.quarantined == len(log.bad)
    assert result.counters.applied == log.good
    _assert_quarantined(database, log)
    _assert_good_rows(database)
    assert set(database.checkpoints().values()) == {len(log.lines)}


def test_a_version_no_column_can_hold_is_quarantined(database: Database) -> None:
    """A version above 2**63 - 1 is quarantined as invalid_version instead of crashing the run."""
    event = ev("CustomerCreated", "cus_1", event_id="evt_1", name="Acme")
    result = database.project([json.dumps({**event, "version": 2**63})])
    assert result.counters.quarantined == 1
    [row] = database.rows("quarantined_events")
    assert row["reason"] == "invalid_version"
    assert database.count("customers") == 0


def test_a_version_over_32_bits_does_not_crash(database: Database) -> None:
    """A valid version of 2**31 (a JSON integer >= 1) is applied and kept, not a crash."""
    event = ev("CustomerCreated", "cus_1", 2**31, event_id="evt_1", name="Acme")
    result = database.project([event])
    assert result.counters.applied == 1
    row = database.row("customers", "cus_1")
    assert row is not None
    assert row["version"] == 2**31


def test_a_very_long_identifier_is_quarantined(database: Database) -> None:
    """A 3,000-character aggregate_id is quarantined (identifiers stop at 255), never a crash."""
    rnd = random.Random(7)
    long_id = "".join(rnd.choice(string.ascii_letters) for _ in range(3000))
    result = database.project([ev("CustomerCreated", long_id, event_id="evt_1", name="Acme")])
    assert result.counters.quarantined == 1
    assert result.position == 1
    [row] = database.rows("quarantined_events")
    assert row["reason"] == "invalid_aggregate_id"
