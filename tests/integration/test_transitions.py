"""Conversation and contact lifecycles: transitions, no-ops, illegal transitions, owners."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.helpers import T0, Database, ev


def at(seconds: float) -> datetime:
    """The timezone-aware UTC datetime an event built with `at=seconds` occurred at."""
    return T0 + timedelta(seconds=seconds)


def only(database: Database, table: str, key: str | tuple[str, str]) -> dict[str, Any]:
    """The row of `table` at `key`, which must exist."""
    row = database.row(table, key)
    assert row is not None, f"no {table} row {key!r}"
    return row


def without_version(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its version column."""
    return {k: v for k, v in row.items() if k != "version"}


def created(version: int = 1, **fields: Any) -> dict[str, Any]:
    """ConversationCreated for cnv_1 with sensible defaults."""
    body = {"channel_id": "chn_1", "contact_id": "con_1", "status": "open", **fields}
    return ev("ConversationCreated", "cnv_1", version, **body)


# --- legal transitions -------------------------------------------------------------------


def test_open_closed_open_archived(database: Database) -> None:
    """open → closed → open → archived, each step visible in status and timestamps."""
    log = [created(at=10)]
    database.project(log)
    assert only(database, "conversations", "cnv_1")["status"] == "open"

    log.append(ev("ConversationClosed", "cnv_1", 2, reason="solved", at=20))
    database.project(log)
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"], row["closed_at"]) == ("closed", "solved", at(20))

    log.append(ev("ConversationReopened", "cnv_1", 3, at=30))
    database.project(log)
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"], row["closed_at"]) == ("open", None, None)

    log.append(ev("ConversationArchived", "cnv_1", 4, reason="old", at=40))
    result = database.project(log)
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"], row["archived_at"]) == ("archived", "old", at(40))
    assert row["closed_at"] is None
    assert row["version"] == 4
    assert result.counters.applied == 1


def test_closed_to_archived(database: Database) -> None:
    """A closed conversation can be archived; closed_at stays as set by the close."""
    database.project(
        [
            created(at=10),
            ev("ConversationClosed", "cnv_1", 2, at=20),
            ev("ConversationArchived", "cnv_1", 3, at=30),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert row["status"] == "archived"
    assert row["archived_at"] == at(30)
    assert row["closed_at"] == at(20)


def test_reclosing_after_reopen_sets_a_new_closed_at(database: Database) -> None:
    """Closing again after a reopen sets closed_at to the second close."""
    database.project(
        [
            created(at=10),
            ev("ConversationClosed", "cnv_1", 2, at=20),
            ev("ConversationReopened", "cnv_1", 3, at=30),
            ev("ConversationClosed", "cnv_1", 4, at=40),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["closed_at"]) == ("closed", at(40))


# --- no-ops ------------------------------------------------------------------------------

NOOPS: dict[str, tuple[list[tuple[str, dict[str, Any]]], str]] = {
    # name: (events after ConversationCreated open at v1, the no-op event name)
    "close_closed": ([("ConversationClosed", {"reason": "first"})], "ConversationClosed"),
    "reopen_open": ([], "ConversationReopened"),
    "reopen_reopened": (
        [("ConversationClosed", {}), ("ConversationReopened", {"reason": "back"})],
        "ConversationReopened",
    ),
    "archive_archived": ([("ConversationArchived", {"reason": "first"})], "ConversationArchived"),
}


@pytest.mark.parametrize("case", list(NOOPS))
def test_conversation_noop_leaves_the_row_and_counts_the_version(
    database: Database, case: str
) -> None:
    """A close/reopen/archive to the current status changes nothing but the version."""
    before_events, noop_name = NOOPS[case]
    log = [created(topic="t", participant_ids=["u1"], at=10)]
    for offset, (name, fields) in enumerate(before_events):
        log.append(ev(name, "cnv_1", 2 + offset, at=20 + offset, **fields))
    database.project(log)
    before = only(database, "conversations", "cnv_1")
    participants = database.rows("conversation_participants")

    noop_version = before["version"] + 1
    log.append(ev(noop_name, "cnv_1", noop_version, reason="again", at=500))
    result = database.project(log)

    after = only(database, "conversations", "cnv_1")
    assert without_version(after) == without_version(before)
    assert after["version"] == noop_version
    assert database.rows("conversation_participants") == participants
    assert result.counters.noop == 1
    assert result.counters.applied == 0
    assert result.counters.rejected == 0
    assert result.counters.anomalies == 0
    assert database.count("event_anomalies") == 0


def test_noop_counts_as_the_last_version_for_the_next_event(database: Database) -> None:
    """After a no-op at version 3, an event at version 3 is stale and one at 4 has no gap."""
    noop = ev("ConversationReopened", "cnv_1", 3, at=30)
    log = [
        created(at=10),
        ev("ConversationUpdated", "cnv_1", 2, changed_fields={"topic": "a"}),
        noop,
    ]
    first = database.project(log)
    assert first.counters.noop == 1
    log += [
        ev("ConversationUpdated", "cnv_1", 3, changed_fields={"topic": "stale"}),
        ev("ConversationUpdated", "cnv_1", 4, changed_fields={"topic": "b"}),
    ]
    second = database.project(log)
    assert second.counters.stale == 1
    assert second.counters.applied == 1
    assert database.count("event_anomalies") == 0
    assert only(database, "conversations", "cnv_1")["topic"] == "b"


def test_noop_in_the_same_batch_leaves_updated_at(database: Database) -> None:
    """A no-op folded in the same batch as the close keeps the close's updated_at and event id."""
    close = ev("ConversationClosed", "cnv_1", 2, reason="solved", at=20)
    result = database.project(
        [created(at=10), close, ev("ConversationClosed", "cnv_1", 3, reason="x", at=30)]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status_reason"], row["updated_at"], row["last_event_id"]) == (
        "solved",
        at(20),
        close["event_id"],
    )
    assert (row["closed_at"], row["version"]) == (at(20), 3)
    assert (result.counters.applied, result.counters.noop) == (2, 1)


def test_contact_deleted_on_a_deleted_contact_is_a_noop(database: Database) -> None:
    """ContactDeleted on a deleted contact keeps deleted_at, reason and updated_at."""
    log = [
        ev("ContactCreated", "con_1", 1, display_name="Ann", at=10),
        ev("ContactDeleted", "con_1", 2, reason="gdpr", at=20),
    ]
    database.project(log)
    before = only(database, "contacts", "con_1")
    log.append(ev("ContactDeleted", "con_1", 3, reason="again", at=30))
    result = database.project(log)
    after = only(database, "contacts", "con_1")
    assert without_version(after) == without_version(before)
    assert after["deleted_at"] == at(20)
    assert after["version"] == 3
    assert (result.counters.noop, result.counters.applied, result.counters.anomalies) == (1, 0, 0)


def test_noop_is_remembered_as_counted(database: Database) -> None:
    """A repeat of a no-op's event_id is a duplicate, not a second no-op."""
    noop = ev("ConversationReopened", "cnv_1", 2, event_id="evt_noop")
    result = database.project(
        [created(), noop, ev("ConversationReopened", "cnv_1", 3, event_id="evt_noop")]
    )
    assert (result.counters.noop, result.counters.duplicate) == (1, 1)
    assert only(database, "conversations", "cnv_1")["version"] == 2


# --- illegal transitions -----------------------------------------------------------------

ON_ARCHIVED: dict[str, dict[str, Any]] = {
    "ConversationUpdated": {"changed_fields": {"topic": "new", "x": "y"}},
    "ConversationClosed": {"reason": "late"},
    "ConversationReopened": {"reason": "late"},
    "ConversationParticipantAdded": {"participant_id": "u9"},
    "ConversationParticipantRemoved": {"participant_id": "u1"},
    "ConversationCreated": {
        "channel_id": "chn_2",
        "contact_id": "con_2",
        "status": "open",
        "topic": "fresh",
        "participant_ids": ["u8"],
    },
}


@pytest.mark.parametrize("name", list(ON_ARCHIVED))
def test_event_on_an_archived_conversation_is_an_illegal_transition(
    database: Database, name: str
) -> None:
    """Any event but Archived on an archived conversation is rejected and recorded."""
    log = [
        created(topic="t", participant_ids=["u1"], at=10),
        ev("ConversationArchived", "cnv_1", 2, reason="old", at=20),
    ]
    database.project(log)
    before = only(database, "conversations", "cnv_1")
    participants = database.rows("conversation_participants")

    illegal = ev(name, "cnv_1", 3, at=30, **ON_ARCHIVED[name])
    log.append(illegal)
    result = database.project(log)

    after = only(database, "conversations", "cnv_1")
    assert without_version(after) == without_version(before)
    assert after["version"] == 3
    assert database.rows("conversation_participants") == participants
    assert (result.counters.applied, result.counters.rejected, result.counters.anomalies) == (
        0,
        1,
        1,
    )
    anomalies = database.rows("event_anomalies")
    assert len(anomalies) == 1
    anomaly = anomalies[0]
    assert anomaly["kind"] == "illegal_transition"
    assert anomaly["position"] == 3
    assert anomaly["event_id"] == illegal["event_id"]
    assert anomaly["event_name"] == name
    assert anomaly["aggregate_type"] == "Conversation"
    assert anomaly["aggregate_id"] == "cnv_1"
    assert anomaly["occurred_at"] == at(30)


def test_rejected_event_counts_as_the_last_version(database: Database) -> None:
    """After an illegal event at version 3, version 3 again is stale and 4 has no gap."""
    result = database.project(
        [
            created(),
            ev("ConversationArchived", "cnv_1", 2),
            ev("ConversationClosed", "cnv_1", 3),
            ev("ConversationReopened", "cnv_1", 3),
            ev("ConversationArchived", "cnv_1", 4),
        ]
    )
    counters = result.counters
    assert (counters.applied, counters.rejected, counters.stale, counters.noop) == (2, 1, 1, 1)
    kinds = [a["kind"] for a in database.rows("event_anomalies")]
    assert kinds == ["illegal_transition"]
    assert only(database, "conversations", "cnv_1")["version"] == 4


def test_rejected_event_is_remembered_as_counted(database: Database) -> None:
    """A repeat of a rejected event's idempotency key on the aggregate is a duplicate."""
    result = database.project(
        [
            created(),
            ev("ConversationArchived", "cnv_1", 2),
            ev("ConversationClosed", "cnv_1", 3, idempotency_key="k1"),
            ev("ConversationClosed", "cnv_1", 4, idempotency_key="k1"),
        ]
    )
    assert (result.counters.rejected, result.counters.duplicate) == (1, 1)
    assert only(database, "conversations", "cnv_1")["version"] == 3


def test_archived_conversation_stays_archived_across_batches(database: Database) -> None:
    """With one event a batch, events after archiving are still illegal transitions."""
    result = database.project(
        [
            created(at=10),
            ev("ConversationArchived", "cnv_1", 2, at=20),
            ev("ConversationReopened", "cnv_1", 3, at=30),
            ev("ConversationUpdated", "cnv_1", 4, changed_fields={"topic": "z"}, at=40),
        ],
        batch_size=1,
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["topic"], row["version"]) == ("archived", None, 4)
    assert (result.counters.rejected, result.counters.anomalies) == (2, 2)
    assert [a["position"] for a in database.rows("event_anomalies")] == [3, 4]


def test_contact_updated_on_a_deleted_contact_is_an_illegal_transition(
    database: Database,
) -> None:
    """ContactUpdated on a deleted contact is rejected, recorded, and moves only the version."""
    log = [
        ev("ContactCreated", "con_1", 1, display_name="Ann", at=10),
        ev("ContactDeleted", "con_1", 2, at=20),
    ]
    database.project(log)
    before = only(database, "contacts", "con_1")
    update = ev("ContactUpdated", "con_1", 3, changed_fields={"display_name": "Bob", "k": "v"})
    log.append(update)
    result = database.project(log)
    after = only(database, "contacts", "con_1")
    assert without_version(after) == without_version(before)
    assert after["version"] == 3
    assert (result.counters.rejected, result.counters.anomalies) == (1, 1)
    anomaly = database.rows("event_anomalies")[0]
    assert (anomaly["kind"], anomaly["position"], anomaly["event_id"]) == (
        "illegal_transition",
        3,
        update["event_id"],
    )
    assert (anomaly["aggregate_type"], anomaly["aggregate_id"]) == ("Contact", "con_1")


def test_contact_updated_after_recreation_applies(database: Database) -> None:
    """A contact created again after deletion can be updated."""
    result = database.project(
        [
            ev("ContactCreated", "con_1", 1, display_name="Ann"),
            ev("ContactDeleted", "con_1", 2),
            ev("ContactCreated", "con_1", 3, display_name="Ann"),
            ev("ContactUpdated", "con_1", 4, changed_fields={"display_name": "Bob"}),
        ]
    )
    assert result.counters.rejected == 0
    assert only(database, "contacts", "con_1")["display_name"] == "Bob"


# --- customer mismatch -------------------------------------------------------------------

MISMATCH: dict[str, tuple[str, dict[str, Any], str, dict[str, Any], str]] = {
    # family: (table, creating event, aggregate id, mismatching event, column to keep)
    "contacts": (
        "contacts",
        {"name": "ContactCreated", "fields": {"display_name": "Ann"}},
        "con_1",
        {"name": "ContactUpdated", "fields": {"changed_fields": {"display_name": "Bob"}}},
        "display_name",
    ),
    "providers": (
        "providers",
        {"name": "ProviderConfigured", "fields": {"kind": "sms"}},
        "prv_1",
        {"name": "ProviderUpdated", "fields": {"changed_fields": {"kind": "email"}}},
        "kind",
    ),
    "channels": (
        "channel_mappings",
        {
            "name": "ChannelMapped",
            "fields": {"kind": "sms", "address": "a", "normalized": "a", "provider_id": "prv_1"},
        },
        "chn_1",
        {"name": "ChannelUnmapped", "fields": {"reason": "theft"}},
        "status",
    ),
    "conversations": (
        "conversations",
        {
            "name": "ConversationCreated",
            "fields": {"channel_id": "chn_1", "contact_id": "con_1", "status": "open"},
        },
        "cnv_1",
        {"name": "ConversationClosed", "fields": {"reason": "theft"}},
        "status",
    ),
}


@pytest.mark.parametrize("family", list(MISMATCH))
def test_customer_mismatch_is_rejected(database: Database, family: str) -> None:
    """An event whose customer_id differs from the row's owner is rejected and recorded."""
    table, create, aggregate_id, other, column = MISMATCH[family]
    log = [ev(create["name"], aggregate_id, 1, customer_id="cus_A", **create["fields"])]
    database.project(log)
    before = only(database, table, aggregate_id)
    intruder = ev(other["name"], aggregate_id, 2, customer_id="cus_B", at=99, **other["fields"])
    log.append(intruder)
    result = database.project(log)
    after = only(database, table, aggregate_id)
    assert without_version(after) == without_version(before)
    assert (after["customer_id"], after["version"]) == ("cus_A", 2)
    assert after[column] == before[column]
    assert (result.counters.applied, result.counters.rejected, result.counters.anomalies) == (
        0,
        1,
        1,
    )
    anomaly = database.rows("event_anomalies")[0]
    assert anomaly["kind"] == "customer_mismatch"
    assert (anomaly["position"], anomaly["event_id"], anomaly["aggregate_id"]) == (
        2,
        intruder["event_id"],
        aggregate_id,
    )


def test_customer_mismatch_on_a_participant_event_adds_no_participant(
    database: Database,
) -> None:
    """A ParticipantAdded claiming another customer leaves participants and count unchanged."""
    result = database.project(
        [
            created(customer_id="cus_A"),
            ev(
                "ConversationParticipantAdded", "cnv_1", 2, customer_id="cus_B", participant_id="u1"
            ),
        ]
    )
    assert result.counters.rejected == 1
    assert database.count("conversation_participants") == 0
    assert only(database, "conversations", "cnv_1")["participant_count"] == 0
    assert database.rows("event_anomalies")[0]["kind"] == "customer_mismatch"


def test_customer_mismatch_on_a_creating_event_is_rejected(database: Database) -> None:
    """A creating event for an existing row of another customer does not take it over."""
    result = database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, customer_id="cus_A", kind="sms"),
            ev("ProviderConfigured", "prv_1", 2, customer_id="cus_B", kind="email"),
        ]
    )
    row = only(database, "providers", "prv_1")
    assert (row["customer_id"], row["kind"], row["version"]) == ("cus_A", "sms", 2)
    assert result.counters.rejected == 1
    assert database.rows("event_anomalies")[0]["kind"] == "customer_mismatch"


def test_matching_customer_applies_after_a_mismatch(database: Database) -> None:
    """The owner's next event applies normally after a rejected mismatch."""
    result = database.project(
        [
            ev("ContactCreated", "con_1", 1, customer_id="cus_A", display_name="Ann"),
            ev(
                "ContactUpdated",
                "con_1",
                2,
                customer_id="cus_B",
                changed_fields={"display_name": "X"},
            ),
            ev(
                "ContactUpdated",
                "con_1",
                3,
                customer_id="cus_A",
                changed_fields={"display_name": "Bob"},
            ),
        ]
    )
    assert (result.counters.applied, result.counters.rejected) == (2, 1)
    assert only(database, "contacts", "con_1")["display_name"] == "Bob"
