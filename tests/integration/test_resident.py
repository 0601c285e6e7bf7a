"""Rows held in memory across batches: whatever the commit interval and memory bound, the
tables equal those of a run that commits and forgets after every batch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import dialect, store
from projections.config import VersionMode
from projections.generator import Noise, generate
from projections.projector import _quick_handoffs, catch_up, rebuild
from projections.resident import LedgerFilter, Resident
from projections.sources.ndjson import NdjsonSource
from tests.helpers import Database, append_log, ev, write_log

PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _work(database: Database, path: Path, work: Any, **options: Any) -> dict[str, Any]:
    source = NdjsonSource(path)
    try:
        work(database.engine, source, database.settings(**options))
    finally:
        source.close()
    return database.snapshot()


def _record_runs(monkeypatch: pytest.MonkeyPatch) -> list[Resident]:
    """The Resident of every run from now on, in order, to look at what it held."""
    from projections import projector

    runs: list[Resident] = []

    class Recorded(Resident):
        def __init__(self) -> None:
            super().__init__()
            runs.append(self)

    monkeypatch.setattr(projector, "Resident", Recorded)
    return runs


@PROPERTY_SETTINGS
@given(
    n=st.integers(min_value=30, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    batch_size=st.sampled_from([1, 3, 17, 5000]),
    cut=st.floats(min_value=0.0, max_value=1.0),
    resident_rows=st.sampled_from([1, 25, 1_000_000]),
    commit_seconds=st.sampled_from([0.0, 30.0]),
    mode=st.sampled_from([VersionMode.sequence, VersionMode.none]),
)
def test_held_rows_give_the_tables_of_a_commit_per_batch(
    database: Database,
    n: int,
    seed: int,
    batch_size: int,
    cut: float,
    resident_rows: int,
    commit_seconds: float,
    mode: VersionMode,
) -> None:
    """Rows held across batches and commits, a rebuild then a run over the rest, equal a
    rebuild that commits, forgets and reads back after every batch."""
    lines = list(generate(n, seed=seed, noise=Noise.default()))
    path = write_log(database.tmp / "log.ndjson", lines)
    # commit_seconds=0 with resident_rows=1: every batch commits, forgets, and reads back.
    options: dict[str, Any] = {"batch_size": batch_size, "version_mode": mode}
    expected = _work(database, path, rebuild, commit_seconds=0, resident_rows=1, **options)
    held = {"commit_seconds": commit_seconds, "resident_rows": resident_rows, **options}
    k = int(len(lines) * cut)
    write_log(path, lines[:k])
    _work(database, path, rebuild, **held)
    append_log(path, lines[k:])
    assert _work(database, path, catch_up, **held) == expected


def test_a_writer_between_two_transactions_makes_the_run_read_rows_again(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer's commit between our transactions: our held rows are dropped, not used."""
    path = write_log(
        database.tmp / "log.ndjson",
        [ev("CustomerCreated", "cus_1", 1, name="A"), ev("CustomerDisabled", "cus_1", 2)],
    )
    engine = database.engine
    real_begin = engine.begin
    transactions = 0

    def let_another_writer_in_before_the_second_transaction() -> Any:
        nonlocal transactions
        transactions += 1
        if transactions == 2:  # between the first run's first and second transactions
            other = NdjsonSource(path)
            try:
                catch_up(engine, other, database.settings(batch_size=1))
            finally:
                other.close()
            append_log(path, [ev("CustomerUpdated", "cus_1", 3, changed_fields={"name": "B"})])
        return real_begin()

    monkeypatch.setattr(engine, "begin", let_another_writer_in_before_the_second_transaction)
    source = NdjsonSource(path)
    try:
        result = catch_up(
            database.engine, source, database.settings(batch_size=1, commit_seconds=0)
        )
    finally:
        source.close()
    row = database.row("customers", "cus_1")
    assert row is not None
    # Folded onto the row as the other run left it (disabled, version 2), not as first held.
    assert (row["status"], row["name"], row["version"]) == ("disabled", "B", 3)
    assert result.counters.anomalies == 0
    assert database.count("event_anomalies") == 0


def test_a_failed_background_write_commits_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger write runs beside the next batch; when it fails, the transaction rolls back."""
    path = write_log(
        database.tmp / "log.ndjson", [ev("CustomerCreated", f"cus_{i}", name="A") for i in range(5)]
    )
    real = store.write_records
    writes = 0

    def fail_on_the_third(*args: Any) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise RuntimeError("disk full")
        real(*args)

    monkeypatch.setattr(store, "write_records", fail_on_the_third)
    source = NdjsonSource(path)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            catch_up(database.engine, source, database.settings(batch_size=1))
    finally:
        source.close()
    assert database.count("customers") == 0
    assert database.count("processed_events") == 0
    assert database.checkpoints() == {}


@pytest.mark.parametrize("failing", [False, True])
def test_a_run_hands_the_lock_over_quickly_and_restores_the_interval(
    database: Database, monkeypatch: pytest.MonkeyPatch, failing: bool
) -> None:
    """While a run folds, the writer thread gets the interpreter back within 0.5 ms of
    asking; the process's own switch interval is back when the run ends, failed or not."""
    path = write_log(
        database.tmp / "log.ndjson", [ev("CustomerCreated", f"cus_{i}", name="A") for i in range(3)]
    )
    real, seen = store.write_records, []

    def writing(*args: Any) -> None:
        seen.append(sys.getswitchinterval())
        if failing:
            raise RuntimeError("disk full")
        real(*args)

    monkeypatch.setattr(store, "write_records", writing)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    source = NdjsonSource(path)
    try:
        if failing:
            with pytest.raises(RuntimeError, match="disk full"):
                catch_up(database.engine, source, database.settings(batch_size=1))
        else:
            catch_up(database.engine, source, database.settings(batch_size=1))
        assert sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        source.close()
        sys.setswitchinterval(before)
    assert seen and all(interval <= 0.0005 for interval in seen)


def test_overlapping_runs_put_the_switch_interval_back_when_the_last_ends() -> None:
    """Runs on several threads (a scheduler's) share the process's interval: the first
    to end leaves it low for the others, the last one puts the process's own back."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    try:
        first, second = _quick_handoffs(), _quick_handoffs()
        first.__enter__()
        second.__enter__()
        assert sys.getswitchinterval() <= 0.0005
        first.__exit__(None, None, None)
        assert sys.getswitchinterval() <= 0.0005  # the second run still folds
        second.__exit__(None, None, None)
        assert sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        sys.setswitchinterval(before)


def test_the_ledger_filter_never_forgets_what_it_was_asked_about() -> None:
    """A "no" from the filter is certain: everything asked about before answers "maybe"."""
    bits = LedgerFilter()
    asked = [f"evt_{i}" for i in range(5000)] + [("customers", f"cus_{i}", "k") for i in range(500)]
    assert len(bits.maybe_then_add(asked[:3000])) < 10  # nothing yet: (almost) all "no"
    bits.maybe_then_add(asked[3000:])
    assert bits.maybe_then_add(asked) == asked
    others = [f"other_{i}" for i in range(5000)]
    assert len(bits.maybe_then_add(others)) < 50  # and it does say "no"
    assert bits.maybe_then_add(others) == others  # which it remembered


def test_one_transaction_for_a_whole_rebuild_by_default(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many batches, one commit: rows are written once, not once per batch."""
    path = write_log(
        database.tmp / "log.ndjson",
        [ev("CustomerCreated", "cus_1", 1, name="A")]
        + [
            ev("CustomerUpdated", "cus_1", v, changed_fields={"name": f"N{v}"})
            for v in range(2, 40)
        ],
    )
    written: list[int] = []
    real = dialect.write_values

    def count(connection: Any, table: Any, rows: Any, *, upsert: bool) -> None:
        rows = list(rows)  # may be an iterator
        if table.name == "customers":
            written.append(len(rows))
        real(connection, table, rows, upsert=upsert)

    monkeypatch.setattr(dialect, "write_values", count)
    result = _work(database, path, rebuild, batch_size=3)
    assert written == [1]
    assert result["customers"][0]["version"] == 39


def test_a_rebuild_folds_into_the_held_rows_until_its_first_commit(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every table is empty no batch lists keys to load; after a commit, batches do."""
    from projections import resident
    from projections.fold import aggregate_keys

    path = write_log(
        database.tmp / "log.ndjson",
        [ev("CustomerCreated", f"cus_{i}", 1, name="A") for i in range(12)]
        + [ev("CustomerUpdated", "cus_1", v, changed_fields={"name": f"N{v}"}) for v in (2, 3)],
    )
    listed: list[int] = []

    def keys(events: Any) -> Any:
        listed.append(len(events))
        return aggregate_keys(events)

    monkeypatch.setattr(resident, "aggregate_keys", keys)
    once = _work(database, path, rebuild, batch_size=3)
    assert listed == []
    every_batch = _work(database, path, rebuild, batch_size=3, commit_seconds=0)
    assert listed == [3, 3, 3, 2]  # the first batch folds in place, then each one loads
    assert once == every_batch
    assert once["customers"][1]["name"] == "N3"


def test_a_key_not_loaded_is_not_taken_for_a_missing_row() -> None:
    """Only a complete table answers "no such row" for a key it does not hold."""
    from projections.batch import Held

    held = Held()
    with pytest.raises(KeyError):
        held["cus_1"]
    held.complete = True
    assert held["cus_1"] is None
    assert "cus_1" not in held  # answering adds nothing
    run = Resident()
    run.rows["customers"].complete = True
    run.forget()  # what the run knew is gone: the table must be loaded again
    with pytest.raises(KeyError):
        run.rows["customers"]["cus_1"]


@pytest.mark.parametrize("first", [0, 150])
def test_rows_hold_one_string_per_repeated_value(
    database: Database, monkeypatch: pytest.MonkeyPatch, first: int
) -> None:
    """Owners, statuses, reasons and kinds that repeat across rows are one object each.

    Every event brings its own copy of such a string; rows held for a whole run must not
    keep one each. `first` events are committed before the run, which then reads rows back.
    """
    runs = _record_runs(monkeypatch)
    lines = list(generate(400, seed=7, noise=Noise.default()))
    path = write_log(database.tmp / "log.ndjson", lines[:first])
    _work(database, path, rebuild)
    append_log(path, lines[first:])
    _work(database, path, catch_up)
    held = runs[-1].rows
    repeated = 0  # values held by more than one row: where sharing shows
    for name, rows in held.items():
        for column in (
            "customer_id",
            "status",
            "status_reason",
            "kind",
            "provider_kind",
            "channel_kind",
        ):
            objects: dict[str, set[int]] = {}
            holders: dict[str, int] = {}
            for row in rows.values():
                if row is not None and isinstance(value := getattr(row, column, None), str):
                    objects.setdefault(value, set()).add(id(value))
                    holders[value] = holders.get(value, 0) + 1
            assert all(len(ids) == 1 for ids in objects.values()), (name, column)
            repeated += sum(1 for count in holders.values() if count > 1)
    assert repeated > 20


def test_child_rows_hold_their_parents_key_strings(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversation holds its channel's and contact's own id strings, a channel its
    provider's: not the copies its events brought, one more string per reference."""
    runs = _record_runs(monkeypatch)
    path = write_log(database.tmp / "log.ndjson", generate(400, seed=7, noise=Noise.default()))
    _work(database, path, rebuild)
    held = runs[-1].rows
    shared = 0
    for child, reference, parent in (
        ("conversations", "channel_id", "channel_mappings"),
        ("conversations", "contact_id", "contacts"),
        ("channel_mappings", "provider_id", "providers"),
    ):
        for row in held[child].values():
            key = None if row is None else getattr(row, reference)
            if key is not None and (owner := held[parent].get(key)) is not None:
                assert key is getattr(owner, reference), (child, reference, key)
                shared += 1
    assert shared > 50
