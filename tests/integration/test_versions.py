"""Order, duplicates and versions (SPEC §4): at most once, stale skipped, gaps recorded."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from projections.config import VersionMode
from projections.projector import RunResult
from tests.helpers import Database, ev


def only(database: Database, table: str, key: str) -> dict[str, Any]:
    """The row of `table` at `key`, which must exist."""
    row = database.row(table, key)
    assert row is not None, f"no {table} row {key!r}"
    return row


def outcomes(result: RunResult) -> dict[str, int]:
    """The counters of a run, without zeros."""
    return {k: v for k, v in result.counters.as_dict().items() if v}


def rename(version: int, name: str, **options: Any) -> dict[str, Any]:
    """CustomerUpdated for cus_1 setting its name."""
    return ev("CustomerUpdated", "cus_1", version, changed_fields={"name": name}, **options)


def created(**options: Any) -> dict[str, Any]:
    """CustomerCreated for cus_1 at version 1."""
    return ev("CustomerCreated", "cus_1", 1, name="Acme", **options)


# --- duplicates by event_id --------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_repeated_event_id_is_a_duplicate(database: Database, batch_size: int) -> None:
    """A second event with an applied event_id is skipped as a duplicate, in or across batches."""
    result = database.project(
        [
            created(),
            rename(2, "First", event_id="evt_dup"),
            rename(3, "Second", event_id="evt_dup"),
        ],
        batch_size=batch_size,
    )
    assert outcomes(result) == {"read": 3, "applied": 2, "duplicate": 1}
    row = only(database, "customers", "cus_1")
    assert (row["name"], row["version"]) == ("First", 2)


def test_repeated_event_id_in_a_later_run_is_a_duplicate(database: Database) -> None:
    """An event_id applied in an earlier run is a duplicate in a later run."""
    log = [created(), rename(2, "First", event_id="evt_dup")]
    database.project(log)
    log.append(rename(3, "Second", event_id="evt_dup"))
    result = database.project(log)
    assert outcomes(result) == {"read": 1, "duplicate": 1}
    assert only(database, "customers", "cus_1")["name"] == "First"


def test_exact_repeat_of_a_whole_log_changes_nothing(database: Database) -> None:
    """A log followed by an exact copy of itself gives the tables of the log alone."""
    log = [
        created(),
        rename(2, "B"),
        ev("ContactCreated", "con_1", 1, display_name="Ann"),
        ev("ContactDeleted", "con_1", 2),
    ]
    database.project(log, name="once.ndjson")
    once = database.snapshot()
    result = database.project([*log, *log], fresh=True, name="twice.ndjson")
    assert outcomes(result) == {"read": 8, "applied": 4, "duplicate": 4}
    twice = database.snapshot()
    assert twice["customers"] == once["customers"]
    assert twice["contacts"] == once["contacts"]
    assert len(twice["processed_events"]) == 4


def test_event_id_repeated_on_another_aggregate_is_a_duplicate(database: Database) -> None:
    """event_id is unique in the log: its repeat on a different aggregate is a duplicate."""
    result = database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="A", event_id="evt_same"),
            ev("ContactCreated", "con_1", 1, event_id="evt_same"),
        ]
    )
    assert outcomes(result) == {"read": 2, "applied": 1, "duplicate": 1}
    assert database.row("contacts", "con_1") is None


# --- duplicates by idempotency_key -------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_idempotency_key_repeated_on_the_aggregate_is_a_duplicate(
    database: Database, batch_size: int
) -> None:
    """A new event_id with an idempotency_key already applied to the aggregate is a duplicate."""
    result = database.project(
        [
            created(),
            rename(2, "First", idempotency_key="k1"),
            rename(3, "Retry", idempotency_key="k1"),
        ],
        batch_size=batch_size,
    )
    assert outcomes(result) == {"read": 3, "applied": 2, "duplicate": 1}
    row = only(database, "customers", "cus_1")
    assert (row["name"], row["version"]) == ("First", 2)


def test_idempotency_key_repeated_in_a_later_run_is_a_duplicate(database: Database) -> None:
    """An idempotency_key applied in an earlier run makes a later retry a duplicate."""
    log = [created(), rename(2, "First", idempotency_key="k1")]
    database.project(log)
    log.append(rename(3, "Retry", idempotency_key="k1"))
    result = database.project(log)
    assert outcomes(result) == {"read": 1, "duplicate": 1}
    assert only(database, "customers", "cus_1")["name"] == "First"


def test_idempotency_key_on_another_aggregate_is_not_a_duplicate(database: Database) -> None:
    """The same idempotency_key on a different aggregate of the family is applied."""
    result = database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="A", idempotency_key="k1"),
            ev("CustomerCreated", "cus_2", 1, name="B", idempotency_key="k1"),
        ]
    )
    assert outcomes(result) == {"read": 2, "applied": 2}
    assert only(database, "customers", "cus_2")["name"] == "B"


def test_idempotency_key_on_another_aggregate_across_runs_is_not_a_duplicate(
    database: Database,
) -> None:
    """A key applied to one aggregate in an earlier run does not block another aggregate."""
    log = [ev("ContactCreated", "con_1", 1, idempotency_key="k1")]
    database.project(log)
    log.append(ev("ContactCreated", "con_2", 1, idempotency_key="k1"))
    result = database.project(log)
    assert outcomes(result) == {"read": 1, "applied": 1}
    assert database.row("contacts", "con_2") is not None


def test_idempotency_key_on_another_aggregate_type_is_not_a_duplicate(
    database: Database,
) -> None:
    """A key on a customer and on a contact with the same id are different aggregates."""
    result = database.project(
        [
            ev("CustomerCreated", "same", 1, name="A", idempotency_key="k1"),
            ev("ContactCreated", "same", 1, idempotency_key="k1"),
        ]
    )
    assert outcomes(result) == {"read": 2, "applied": 2}


def test_events_without_idempotency_key_are_not_duplicates(database: Database) -> None:
    """Events with distinct ids and no idempotency_key are all applied."""
    result = database.project([created(), rename(2, "B"), rename(3, "C")])
    assert outcomes(result) == {"read": 3, "applied": 3}


# --- stale -------------------------------------------------------------------------------


def test_version_not_above_the_last_is_stale(database: Database) -> None:
    """An event whose version equals or is below the last applied one is skipped as stale."""
    result = database.project(
        [created(), rename(2, "Two"), rename(3, "Three"), rename(3, "Again"), rename(2, "Back")]
    )
    assert outcomes(result) == {"read": 5, "applied": 3, "stale": 2}
    row = only(database, "customers", "cus_1")
    assert (row["name"], row["version"]) == ("Three", 3)
    assert database.count("event_anomalies") == 0


def test_stale_in_a_later_run(database: Database) -> None:
    """An event below the stored version in a later run is stale and changes nothing."""
    log = [created(), rename(2, "Two")]
    database.project(log)
    before = only(database, "customers", "cus_1")
    log.append(rename(1, "Old"))
    result = database.project(log)
    assert outcomes(result) == {"read": 1, "stale": 1}
    assert only(database, "customers", "cus_1") == before


def test_stale_with_one_event_a_batch(database: Database) -> None:
    """Stale detection sees versions applied in earlier batches of the same run."""
    result = database.project([created(), rename(2, "Two"), rename(2, "Dup version")], batch_size=1)
    assert outcomes(result) == {"read": 3, "applied": 2, "stale": 1}
    assert only(database, "customers", "cus_1")["name"] == "Two"


def test_repeat_of_a_stale_event_is_stale_again(database: Database) -> None:
    """A stale event is not remembered: its exact repeat is stale again, not a duplicate."""
    stale = rename(1, "Old", event_id="evt_stale", idempotency_key="k_stale")
    result = database.project([created(), rename(2, "Two"), stale, dict(stale)])
    assert outcomes(result) == {"read": 4, "applied": 2, "stale": 2}


def test_repeat_of_a_stale_event_in_a_later_run_is_stale_again(database: Database) -> None:
    """A stale event repeated in a later run is stale again."""
    stale = rename(1, "Old", event_id="evt_stale")
    log = [created(), rename(2, "Two"), stale]
    first = database.project(log)
    assert first.counters.stale == 1
    log.append(dict(stale))
    result = database.project(log)
    assert outcomes(result) == {"read": 1, "stale": 1}


def test_stale_event_id_is_not_remembered_as_processed(database: Database) -> None:
    """Only counted events enter processed_events; a stale one does not."""
    stale = rename(1, "Old", event_id="evt_stale")
    database.project([created(), rename(2, "Two"), stale])
    ids = {r["event_id"] for r in database.rows("processed_events")}
    assert "evt_stale" not in ids
    assert len(ids) == 2


def test_versions_are_per_aggregate(database: Database) -> None:
    """Each aggregate has its own version sequence."""
    result = database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="A"),
            ev("CustomerCreated", "cus_2", 1, name="B"),
            ev("ContactCreated", "cus_1", 1),
            ev("CustomerUpdated", "cus_2", 2, changed_fields={"name": "B2"}),
        ]
    )
    assert outcomes(result) == {"read": 4, "applied": 4}


# --- gaps --------------------------------------------------------------------------------


def test_version_gap_is_applied_and_recorded(database: Database) -> None:
    """A version more than one above the last is applied with a version_gap anomaly."""
    gap = rename(4, "Four")
    result = database.project([created(), gap])
    assert outcomes(result) == {"read": 2, "applied": 2, "anomalies": 1}
    row = only(database, "customers", "cus_1")
    assert (row["name"], row["version"]) == ("Four", 4)
    anomaly = database.rows("event_anomalies")[0]
    assert (anomaly["kind"], anomaly["position"], anomaly["event_id"]) == (
        "version_gap",
        2,
        gap["event_id"],
    )
    assert (anomaly["aggregate_type"], anomaly["aggregate_id"]) == ("Customer", "cus_1")


def test_first_event_above_version_one_is_a_gap(database: Database) -> None:
    """An aggregate's first event with version 3 is applied and recorded as a gap."""
    result = database.project([ev("ProviderConfigured", "prv_1", 3, kind="sms")])
    assert outcomes(result) == {"read": 1, "applied": 1, "anomalies": 1}
    assert database.rows("event_anomalies")[0]["kind"] == "version_gap"
    assert only(database, "providers", "prv_1")["version"] == 3


def test_after_a_gap_the_next_version_continues_without_anomaly(database: Database) -> None:
    """After a gap to 5, version 6 applies cleanly and versions up to 5 are stale."""
    result = database.project([created(), rename(5, "Five"), rename(4, "Four"), rename(6, "Six")])
    assert outcomes(result) == {"read": 4, "applied": 3, "stale": 1, "anomalies": 1}
    assert only(database, "customers", "cus_1")["name"] == "Six"
    assert database.count("event_anomalies") == 1


def test_gap_across_runs_is_recorded(database: Database) -> None:
    """A gap between the stored version and a later run's event is recorded."""
    log = [created()]
    database.project(log)
    log.append(rename(3, "Three"))
    result = database.project(log)
    assert outcomes(result) == {"read": 1, "applied": 1, "anomalies": 1}


def test_gap_on_a_rejected_event_records_both_anomalies(database: Database) -> None:
    """A gapped event that is also an illegal transition yields two anomalies and one rejection."""
    result = database.project(
        [
            ev("ContactCreated", "con_1", 1),
            ev("ContactDeleted", "con_1", 2),
            ev("ContactUpdated", "con_1", 5, changed_fields={"display_name": "x"}),
        ]
    )
    assert outcomes(result) == {"read": 3, "applied": 2, "rejected": 1, "anomalies": 2}
    assert sorted(a["kind"] for a in database.rows("event_anomalies")) == [
        "illegal_transition",
        "version_gap",
    ]
    assert only(database, "contacts", "con_1")["version"] == 5


# --- version mode none -------------------------------------------------------------------


def test_version_mode_none_applies_repeating_versions_in_log_order(database: Database) -> None:
    """With version mode none, events of one aggregate all at version 1 apply in order."""
    result = database.project(
        [
            created(),
            rename(1, "Two"),
            ev("CustomerDisabled", "cus_1", 1, reason="r"),
            rename(1, "Last"),
        ],
        version_mode=VersionMode.none,
    )
    assert outcomes(result) == {"read": 4, "applied": 4}
    row = only(database, "customers", "cus_1")
    assert (row["name"], row["status"]) == ("Last", "disabled")
    assert database.count("event_anomalies") == 0


def test_version_mode_none_ignores_descending_versions(database: Database) -> None:
    """With version mode none, lower versions later in the log are still applied, no gaps."""
    result = database.project(
        [created(), rename(7, "Seven"), rename(2, "Two")], version_mode=VersionMode.none
    )
    assert outcomes(result) == {"read": 3, "applied": 3}
    assert only(database, "customers", "cus_1")["name"] == "Two"
    assert database.count("event_anomalies") == 0


def test_version_mode_none_across_batches(database: Database) -> None:
    """With version mode none and one event a batch, repeating versions are still applied."""
    result = database.project(
        [created(), rename(1, "B"), rename(1, "C")],
        batch_size=1,
        version_mode=VersionMode.none,
    )
    assert outcomes(result) == {"read": 3, "applied": 3}
    assert only(database, "customers", "cus_1")["name"] == "C"


def test_version_mode_none_still_finds_duplicate_event_ids(database: Database) -> None:
    """With version mode none, a repeated event_id is a duplicate."""
    log = [created(), rename(1, "B", event_id="evt_b")]
    result = database.project(
        [*log, rename(1, "C", event_id="evt_b")], version_mode=VersionMode.none
    )
    assert outcomes(result) == {"read": 3, "applied": 2, "duplicate": 1}
    assert only(database, "customers", "cus_1")["name"] == "B"


def test_version_mode_none_still_finds_duplicate_idempotency_keys(database: Database) -> None:
    """With version mode none, a repeated idempotency_key on the aggregate is a duplicate."""
    result = database.project(
        [created(), rename(1, "B", idempotency_key="k"), rename(1, "C", idempotency_key="k")],
        version_mode=VersionMode.none,
    )
    assert outcomes(result) == {"read": 3, "applied": 2, "duplicate": 1}
    assert only(database, "customers", "cus_1")["name"] == "B"


def test_version_mode_none_duplicates_across_runs(database: Database) -> None:
    """With version mode none, a duplicate in a later run is still found."""
    log = [created(), rename(1, "B", event_id="evt_b", idempotency_key="k")]
    database.project(log, version_mode=VersionMode.none)
    log += [rename(1, "C", event_id="evt_b"), rename(1, "D", idempotency_key="k")]
    result = database.project(log, version_mode=VersionMode.none)
    assert outcomes(result) == {"read": 2, "duplicate": 2}
    assert only(database, "customers", "cus_1")["name"] == "B"


# --- counters ----------------------------------------------------------------------------


def test_counters_add_up_over_every_outcome(database: Database) -> None:
    """read equals applied + noop + duplicate + stale + unknown + quarantined + rejected."""
    unknown = dict(created())
    unknown.update(event_name="InvoicePaid", aggregate_type="Invoice", aggregate_id="inv_1")
    conversation: dict[str, Any] = {"channel_id": "chn_1", "contact_id": "con_1", "status": "open"}
    log: list[dict[str, Any] | str] = [
        created(event_id="evt_a"),  # applied
        rename(2, "B"),  # applied
        rename(4, "D"),  # applied, version gap
        rename(3, "C"),  # stale
        created(event_id="evt_a"),  # duplicate
        "{not json",  # quarantined
        orjson.dumps(unknown).decode(),  # unknown
        ev("ConversationCreated", "cnv_1", 1, **conversation),  # applied
        ev("ConversationReopened", "cnv_1", 2),  # noop
        ev("ConversationArchived", "cnv_1", 3),  # applied
        ev("ConversationClosed", "cnv_1", 4),  # rejected (illegal)
        ev("ContactCreated", "con_1", 1, customer_id="cus_X"),  # applied
        ev("ContactUpdated", "con_1", 2, changed_fields={"display_name": "x"}),  # rejected
    ]
    result = database.project(log)
    counters = result.counters
    assert outcomes(result) == {
        "read": 13,
        "applied": 6,
        "noop": 1,
        "duplicate": 1,
        "stale": 1,
        "unknown": 1,
        "quarantined": 1,
        "rejected": 2,
        "anomalies": 3,
    }
    assert counters.read == (
        counters.applied
        + counters.noop
        + counters.duplicate
        + counters.stale
        + counters.unknown
        + counters.quarantined
        + counters.rejected
    )
    assert database.count("event_anomalies") == 3


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_counters_are_the_same_whatever_the_batch_size(database: Database, batch_size: int) -> None:
    """The outcome of each event does not depend on how the log is cut into batches."""
    log = [
        created(event_id="evt_a"),
        rename(2, "B", idempotency_key="k"),
        rename(3, "C", idempotency_key="k"),
        rename(2, "Old"),
        created(event_id="evt_a"),
        rename(5, "E"),
        ev("ContactCreated", "con_1", 1),
        ev("ContactDeleted", "con_1", 2),
        ev("ContactDeleted", "con_1", 3),
    ]
    result = database.project(log, batch_size=batch_size)
    assert outcomes(result) == {
        "read": 9,
        "applied": 5,
        "noop": 1,
        "duplicate": 2,
        "stale": 1,
        "anomalies": 1,
    }
    row = only(database, "customers", "cus_1")
    assert (row["name"], row["version"]) == ("E", 5)
