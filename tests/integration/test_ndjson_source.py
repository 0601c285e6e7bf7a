"""The NDJSON source: growing files, complete lines, refused mismatches, gzip, long lines, CRLF."""

from __future__ import annotations

import gzip
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from projections.errors import ConfigurationError, SourceMismatchError
from projections.events import MAX_LINE_BYTES
from projections.generator import Noise, generate
from projections.sources.ndjson import NdjsonSource
from projections.store import PROJECTORS
from tests.helpers import Database, append_log, cli, ev, line, write_log

ZERO = {
    "read": 0,
    "applied": 0,
    "noop": 0,
    "duplicate": 0,
    "stale": 0,
    "unknown": 0,
    "quarantined": 0,
    "rejected": 0,
    "anomalies": 0,
}


def _customer(i: int, name: str = "Customer") -> dict[str, Any]:
    """A CustomerCreated whose every byte is fixed by `i` (same length for any 4-char name)."""
    return ev(
        "CustomerCreated",
        f"cus_{i:04d}",
        event_id=f"evt_{i:08d}",
        at=i,
        name=f"{name} {i:04d}",
    )


def _without_source(snapshot: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """A snapshot comparable across files: the source label names the file."""
    return {
        table: [{k: v for k, v in row.items() if k != "source"} for row in rows]
        for table, rows in snapshot.items()
    }


def _run_cli(database: Database, path: Path, *extra: str) -> Any:
    return cli("run", "--source", str(path), "--database-url", database.url_text, *extra)


# -- a file that another writer appends to -------------------------------------------------


def test_run_reads_only_the_complete_lines_another_writer_appended(database: Database) -> None:
    """A half-written last line is not read and the checkpoint stays before it until completed."""
    path = database.tmp / "live.ndjson"
    events = [_customer(i) for i in range(1, 6)]
    write_log(path, events[:3])
    first = database.project(path)
    assert (first.position, first.counters.applied) == (3, 3)

    fourth, fifth = line(events[3]), line(events[4])
    with path.open("ab") as handle:
        handle.write(fourth + fifth[: len(fifth) // 2])
    second = database.project(path)
    assert (second.position, second.counters.read, second.counters.applied) == (4, 1, 1)
    assert database.checkpoints() == dict.fromkeys(PROJECTORS, 4)
    assert database.row("customers", "cus_0005") is None
    assert database.count("quarantined_events") == 0

    with path.open("ab") as handle:  # the whole JSON object, still without its newline
        handle.write(fifth[len(fifth) // 2 : -1])
    waiting = database.project(path)
    assert waiting.counters.as_dict() == ZERO
    assert waiting.position == 4
    assert database.row("customers", "cus_0005") is None

    with path.open("ab") as handle:
        handle.write(b"\n")
    third = database.project(path)
    assert (third.position, third.counters.read, third.counters.applied) == (5, 1, 1)
    assert database.row("customers", "cus_0005")["name"] == "Customer 0005"  # type: ignore[index]
    assert database.checkpoints() == dict.fromkeys(PROJECTORS, 5)
    assert database.count("quarantined_events") == 0


def test_a_run_with_nothing_new_applies_nothing(database: Database) -> None:
    """Running again over an unchanged file reads nothing: every counter is zero."""
    path = database.tmp / "log.ndjson"
    path.write_bytes(b"".join(generate(300, seed=7, noise=Noise.default())))
    database.project(path, batch_size=64)
    before = database.snapshot()
    checkpoints = database.rows("projection_checkpoints")

    again = database.project(path, batch_size=64)
    assert again.counters.as_dict() == ZERO
    assert again.position == 300
    done = _run_cli(database, path, "--json")
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert {k: summary[k] for k in ZERO} == ZERO
    assert summary["position"] == 300
    assert database.snapshot() == before
    assert database.rows("projection_checkpoints") == checkpoints


def test_runs_while_another_thread_appends_equal_one_rebuild(database: Database) -> None:
    """Runs racing a writer that appends arbitrary byte chunks end equal to one rebuild."""
    path = database.tmp / "racing.ndjson"
    log = b"".join(generate(600, seed=11, noise=Noise.default()))
    path.write_bytes(b"")
    rng = random.Random(11)
    cuts = sorted(rng.sample(range(1, len(log)), 40))
    finished, stop = threading.Event(), threading.Event()
    runs = [0]

    def writer() -> None:
        for number, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(log)], strict=True)):
            with path.open("ab") as handle:
                handle.write(log[start:end])
            seen = runs[0]
            while number % 8 == 7 and runs[0] == seen and not stop.is_set():
                time.sleep(0.001)  # let a few runs see a half-written log
            time.sleep(rng.uniform(0, 0.01))
        finished.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not finished.is_set():
            database.project(path, batch_size=rng.randint(1, 50))
            runs[0] += 1
    finally:
        stop.set()
        thread.join()
    last = database.project(path, batch_size=50)
    assert last.position == 600
    raced = database.snapshot()
    assert runs[0] >= 5

    database.project(path, fresh=True)
    assert raced == database.snapshot()


# -- a file that no longer matches its checkpoint --------------------------------------------

LINES = 120  # about 28 KiB: the first and the last lines lie more than 4 KiB apart


def _truncated_mid_line(lines: list[bytes]) -> bytes:
    return b"".join(lines)[: -len(lines[-1]) - 10]


def _first_half(lines: list[bytes]) -> bytes:
    return b"".join(lines[: len(lines) // 2])


def _emptied(lines: list[bytes]) -> bytes:
    return b""


def _last_line_changed(lines: list[bytes]) -> bytes:
    return b"".join([*lines[:-1], line(_customer(LINES, "Renamed!"))])


def _first_line_changed_then_grown(lines: list[bytes]) -> bytes:
    changed = [line(_customer(1, "Renamed!")), *lines[1:]]
    return b"".join(changed + [line(_customer(i)) for i in range(LINES + 1, LINES + 4)])


def _first_lines_longer(lines: list[bytes]) -> bytes:
    longer = [line(_customer(i, "A longer name")) for i in range(1, 4)]
    return b"".join([*longer, *lines[3:]])


def _another_log_of_the_same_length(lines: list[bytes]) -> bytes:
    other = [line(_customer(i, "Somebody")) for i in range(1, LINES + 1)]
    replaced = b"".join(other)
    assert len(replaced) == len(b"".join(lines))
    return replaced


CHANGES: dict[str, Callable[[list[bytes]], bytes]] = {
    "truncated mid-line": _truncated_mid_line,
    "truncated at a line": _first_half,
    "emptied": _emptied,
    "same length, last line before the checkpoint changed": _last_line_changed,
    "first line changed, new lines appended": _first_line_changed_then_grown,
    "first lines changed, other length": _first_lines_longer,
    "replaced by another log of the same length": _another_log_of_the_same_length,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_file_that_no_longer_matches_its_checkpoint_is_refused(
    database: Database, change: str
) -> None:
    """A truncated or replaced file is refused by the API and the CLI; nothing is written."""
    path = database.tmp / "changing.ndjson"
    lines = [line(_customer(i)) for i in range(1, LINES + 1)]
    path.write_bytes(b"".join(lines))
    assert database.project(path, batch_size=50).position == LINES
    before = database.snapshot()
    checkpoints = database.rows("projection_checkpoints")

    path.write_bytes(CHANGES[change](lines))
    with pytest.raises(SourceMismatchError, match="rebuild"):
        database.project(path)
    refused = _run_cli(database, path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "rebuild" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert database.snapshot() == before
    assert database.rows("projection_checkpoints") == checkpoints

    complete = path.read_bytes().count(b"\n")
    rebuilt = database.project(path, fresh=True)
    assert rebuilt.position == complete
    assert database.count("customers") == complete
    if complete:
        assert database.checkpoints() == dict.fromkeys(PROJECTORS, complete)
    if "changed" in change or "replaced" in change:
        assert database.snapshot() != before
    again = _run_cli(database, path, "--json")
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout)["read"] == 0


def test_rebuild_by_the_cli_accepts_a_replaced_file(database: Database) -> None:
    """After a refusal, `projections rebuild` over the replaced file works and `run` goes on."""
    path = database.tmp / "replaced.ndjson"
    lines = [line(_customer(i)) for i in range(1, LINES + 1)]
    path.write_bytes(b"".join(lines))
    assert _run_cli(database, path).returncode == 0
    path.write_bytes(_another_log_of_the_same_length(lines))
    assert _run_cli(database, path).returncode == 2

    rebuilt = cli("rebuild", "--source", str(path), "--database-url", database.url_text)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert database.row("customers", "cus_0001")["name"] == "Somebody 0001"  # type: ignore[index]
    append_log(path, [_customer(LINES + 1)])
    grown = _run_cli(database, path, "--json")
    assert grown.returncode == 0, grown.stderr
    assert orjson.loads(grown.stdout)["applied"] == 1
    assert database.checkpoints() == dict.fromkeys(PROJECTORS, LINES + 1)


# -- gzip -----------------------------------------------------------------------------------


def test_a_gzip_log_is_rebuilt_and_followed_by_runs(database: Database) -> None:
    """A .gz log: rebuild, runs after it is rewritten longer or given another member, as plain."""
    lines = list(generate(900, seed=5, noise=Noise.default()))
    plain = database.tmp / "plain.ndjson"
    plain.write_bytes(b"".join(lines))
    database.project(plain, fresh=True, batch_size=100)
    expected = _without_source(database.snapshot())

    packed = database.tmp / "log.ndjson.gz"
    head = b"".join(lines[:300])
    packed.write_bytes(gzip.compress(head + lines[300][:40]))  # ends inside line 301
    first = cli(
        "rebuild",
        "--source",
        str(packed),
        "--database-url",
        database.url_text,
        "--batch-size",
        "70",
        "--json",
    )
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout)["position"] == 300
    assert database.checkpoints() == dict.fromkeys(PROJECTORS, 300)

    # Rewritten whole, at another compression level: same text, other bytes.
    packed.write_bytes(gzip.compress(b"".join(lines[:600]), compresslevel=1))
    assert database.project(packed, batch_size=70).position == 600
    with packed.open("ab") as handle:  # `gzip -c more >> log.gz`: a second member
        handle.write(gzip.compress(b"".join(lines[600:])))
    follow = _run_cli(database, packed, "--json", "--batch-size", "70")
    assert follow.returncode == 0, follow.stderr
    assert orjson.loads(follow.stdout)["position"] == 900
    assert _without_source(database.snapshot()) == expected
    assert database.project(packed).counters.as_dict() == ZERO

    packed.write_bytes(gzip.compress(b"".join(lines[:500])))
    with pytest.raises(SourceMismatchError):
        database.project(packed)
    database.project(packed, fresh=True)
    assert database.checkpoints() == dict.fromkeys(PROJECTORS, 500)


def test_a_gzip_log_still_being_written_is_read_as_far_as_it_goes(database: Database) -> None:
    """A .gz whose stream is cut short (still being written) gives its complete lines, then more."""
    lines = list(generate(2000, seed=9, noise=Noise.default()))
    plain = database.tmp / "plain.ndjson"
    plain.write_bytes(b"".join(lines))
    database.project(plain, fresh=True)
    expected = _without_source(database.snapshot())
    database.project(plain, fresh=True)  # any state: the rebuild below starts over

    packed = database.tmp / "writing.ndjson.gz"
    whole = gzip.compress(b"".join(lines))
    packed.write_bytes(whole[: len(whole) // 2])
    first = cli("rebuild", "--source", str(packed), "--database-url", database.url_text, "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    position = orjson.loads(first.stdout)["position"]
    assert 0 < position < 2000
    assert database.checkpoints() == dict.fromkeys(PROJECTORS, position)
    assert database.project(packed).counters.as_dict() == ZERO

    packed.write_bytes(whole)
    rest = _run_cli(database, packed, "--json")
    assert rest.returncode == 0, rest.stderr
    assert orjson.loads(rest.stdout)["position"] == 2000
    assert _without_source(database.snapshot()) == expected


def test_a_gz_file_that_is_not_gzip_is_refused_with_a_message(database: Database) -> None:
    """A .gz name over plain text fails with exit 2 and a message, not a crash; nothing written."""
    packed = database.tmp / "not-really.ndjson.gz"
    write_log(packed, [_customer(1), _customer(2)])
    before = database.snapshot()
    with pytest.raises(ConfigurationError, match="not-really"):
        database.project(packed)
    refused = _run_cli(database, packed)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not-really.ndjson.gz" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert database.snapshot() == before
    assert database.checkpoints() == {}


# -- lines over 1 MiB ---------------------------------------------------------------------


def _sized(size: int, event_id: str) -> bytes:
    """A valid CustomerUpdated line of exactly `size` bytes before its newline."""
    event = ev("CustomerUpdated", "cus_0001", 2, event_id=event_id, changed_fields={"notes": ""})
    pad = size - len(orjson.dumps(event))
    event["payload"]["changed_fields"]["notes"] = "x" * pad
    raw = orjson.dumps(event)
    assert len(raw) == size
    return raw + b"\n"


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
@pytest.mark.parametrize("size", [MAX_LINE_BYTES + 1, 3 * MAX_LINE_BYTES + 17])
def test_a_line_over_one_mib_is_quarantined_and_the_rest_applied(
    database: Database, size: int, batch_size: int
) -> None:
    """A line over 1 MiB mid-file is quarantined as line_too_long; the lines after it apply."""
    path = database.tmp / "long.ndjson"
    before = [_customer(i) for i in range(1, 4)]
    after = [_customer(i) for i in range(4, 7)]
    path.write_bytes(
        b"".join(line(e) for e in before)
        + _sized(size, "evt_long")
        + b"".join(line(e) for e in after)
    )
    result = database.project(path, batch_size=batch_size)
    assert result.position == 7
    assert result.counters.quarantined == 1
    assert result.counters.applied == 6
    [quarantined] = database.rows("quarantined_events")
    assert (quarantined["position"], quarantined["reason"]) == (4, "line_too_long")
    assert database.count("customers") == 6
    assert "notes" not in database.row("customers", "cus_0001")["attributes"]  # type: ignore[index]

    append_log(path, [_customer(7)])  # the checkpoint after a long line still verifies
    more = database.project(path, batch_size=batch_size)
    assert (more.position, more.counters.applied) == (8, 1)


def test_a_line_of_exactly_one_mib_is_applied(database: Database) -> None:
    """A line of exactly 1 MiB is not too long: it is applied like any other."""
    path = database.tmp / "edge.ndjson"
    path.write_bytes(line(_customer(1)) + _sized(MAX_LINE_BYTES, "evt_edge") + line(_customer(2)))
    result = database.project(path, batch_size=2)
    assert (result.position, result.counters.applied, result.counters.quarantined) == (3, 3, 0)
    notes = database.row("customers", "cus_0001")["attributes"]["notes"]  # type: ignore[index]
    assert len(notes) > MAX_LINE_BYTES - 1000


def test_a_long_line_still_being_written_waits_then_is_quarantined(database: Database) -> None:
    """A long line without its newline yet is not read; once complete it is quarantined."""
    path = database.tmp / "growing-long.ndjson"
    long = _sized(2 * MAX_LINE_BYTES + 5, "evt_long")
    write_log(path, [_customer(1)])
    with path.open("ab") as handle:
        handle.write(long[: MAX_LINE_BYTES + MAX_LINE_BYTES // 2])
    first = database.project(path, batch_size=10)
    assert (first.position, first.counters.read) == (1, 1)
    assert database.count("quarantined_events") == 0

    with path.open("ab") as handle:
        handle.write(long[MAX_LINE_BYTES + MAX_LINE_BYTES // 2 :])
    append_log(path, [_customer(2)])
    second = database.project(path, batch_size=10)
    assert (second.position, second.counters.quarantined, second.counters.applied) == (3, 1, 1)
    assert [r["reason"] for r in database.rows("quarantined_events")] == ["line_too_long"]
    assert database.project(path).counters.as_dict() == ZERO


# -- CRLF and blank lines -------------------------------------------------------------------


def test_crlf_line_endings_give_the_same_tables_as_lf(database: Database) -> None:
    """A log with CRLF endings projects exactly like the same log with LF endings."""
    noise = Noise(0.02, 0.01, 0.01, 0.01, 0.02, 0.05, 0.01, 0.01)
    lines = list(generate(400, seed=3, noise=noise))
    lf = database.tmp / "lf.ndjson"
    lf.write_bytes(b"".join(lines))
    database.project(lf, fresh=True, batch_size=37)
    expected = _without_source(database.snapshot())
    assert expected["quarantined_events"], "the generated log should hold invalid lines"

    crlf = database.tmp / "crlf.ndjson"
    crlf.write_bytes(b"".join(raw[:-1] + b"\r\n" for raw in lines))
    result = database.project(crlf, fresh=True, batch_size=37)
    assert result.position == 400
    assert _without_source(database.snapshot()) == expected
    assert not any(r["raw"].endswith("\r") for r in database.rows("quarantined_events"))


def test_crlf_blank_lines_count_as_positions_and_a_bare_cr_waits(database: Database) -> None:
    """Blank CRLF lines are skipped but keep line numbers; a line ending in \\r waits for \\n."""
    path = database.tmp / "blank.ndjson"
    path.write_bytes(
        line(_customer(1))[:-1]
        + b"\r\n"
        + b"\r\n"
        + b"  \r\n"
        + b"{not json\r\n"
        + line(_customer(2))[:-1]
        + b"\r\n"
    )
    first = database.project(path)
    assert first.position == 5
    assert (first.counters.read, first.counters.applied, first.counters.quarantined) == (3, 2, 1)
    [bad] = database.rows("quarantined_events")
    assert (bad["position"], bad["reason"], bad["raw"]) == (4, "invalid_json", "{not json")

    with path.open("ab") as handle:
        handle.write(line(_customer(3))[:-1] + b"\r")
    waiting = database.project(path)
    assert (waiting.position, waiting.counters.read) == (5, 0)
    with path.open("ab") as handle:
        handle.write(b"\n")
    done = database.project(path)
    assert (done.position, done.counters.applied) == (6, 1)
    assert database.row("customers", "cus_0003") is not None


def test_the_tail_fingerprint_stays_right_when_a_read_stops_at_a_half_written_long_line(
    tmp_path: Path,
) -> None:
    """A read of a few lines that ends at an unfinished line over 1 MiB stores a state the
    unchanged file still verifies against (the next run must not call it replaced)."""
    path = tmp_path / "log.ndjson"
    lines = [line(ev("CustomerCreated", f"cus_{i}", name="A" * 50)) for i in range(60)]
    path.write_bytes(b"".join(lines) + b'{"x":"' + b"y" * (1 << 21))  # still being written
    source = NdjsonSource(path)
    try:
        first = source.read(0, {}, 55)  # over 4 KiB: the tail fingerprint is of read bytes
        second = source.read(first.position, first.state, 1000)
    finally:
        source.close()
    assert second.position == 60
    fresh = NdjsonSource(path)
    try:
        fresh.verify(second.position, second.state)
    finally:
        fresh.close()


def test_the_tail_fingerprint_stays_right_after_a_line_kept_cut_short(tmp_path: Path) -> None:
    """A read that passes a line over 1 MiB (kept cut short for quarantine), a few lines, and
    ends at a half-written long line stores a state the unchanged file verifies against."""
    path = tmp_path / "log.ndjson"
    lines = [line(ev("CustomerCreated", f"cus_{i}", name="A" * 50)) for i in range(20)]
    too_long = b'{"x":"' + b"y" * (3 << 20) + b'"}\n'
    after = [line(ev("CustomerCreated", f"cus_b{i}", name="B")) for i in range(3)]
    half = b'{"x":"' + b"z" * (2 << 20)
    path.write_bytes(b"".join(lines) + too_long + b"".join(after) + half)
    source = NdjsonSource(path)
    try:
        batch = source.read(0, {}, 1000)
    finally:
        source.close()
    assert batch.position == 24
    fresh = NdjsonSource(path)
    try:
        fresh.verify(batch.position, batch.state)
    finally:
        fresh.close()
