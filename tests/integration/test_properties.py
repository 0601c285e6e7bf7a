"""Properties over generated logs: runs over any split equal one rebuild, rebuilds repeat,
and re-deliveries of earlier events change no entity table."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.events import Event, decode
from projections.generator import Noise, generate
from projections.store import PROJECTORS
from projections.tables import ENTITY_TABLES
from tests.helpers import Database

PROPERTY_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ENTITY_NAMES = tuple(t.name for t in ENTITY_TABLES)

sizes = st.integers(min_value=50, max_value=400)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
batch_sizes = st.one_of(st.integers(min_value=4, max_value=60), st.sampled_from([1, 97, 250, 5000]))


def _log(n: int, seed: int) -> list[bytes]:
    return list(generate(n, seed=seed, noise=Noise.default()))


def _entities(database: Database) -> dict[str, list[dict[str, Any]]]:
    snapshot = database.snapshot()
    return {name: snapshot[name] for name in ENTITY_NAMES}


def _complete_lines(data: bytes) -> int:
    return data.count(b"\n")


@PROPERTY_SETTINGS
@given(n=sizes, seed=seeds, data=st.data())
def test_runs_over_any_split_of_a_growing_log_equal_one_rebuild(
    database: Database, n: int, seed: int, data: st.DataObject
) -> None:
    """Appending a log in arbitrary byte chunks with a run after each equals one rebuild."""
    log = b"".join(_log(n, seed))
    cuts = data.draw(
        st.lists(st.integers(min_value=0, max_value=len(log)), max_size=8, unique=True),
        label="cuts",
    )
    bounds = [0, *sorted(cuts), len(log)]
    path = database.tmp / "split.ndjson"
    path.write_bytes(b"")
    database.project(path, fresh=True)  # an empty read model for this example
    totals: dict[str, int] = {}
    for start, end in itertools.pairwise(bounds):
        with path.open("ab") as handle:
            handle.write(log[start:end])
        size = data.draw(batch_sizes, label="batch size")
        result = database.project(path, batch_size=size)
        for name, value in result.counters.as_dict().items():
            totals[name] = totals.get(name, 0) + value
        expected = _complete_lines(log[:end])
        assert result.position == expected
        if expected:  # no checkpoint row is written before the first complete line
            assert database.checkpoints() == dict.fromkeys(PROJECTORS, expected)
    split = database.snapshot()

    whole = database.project(path, fresh=True, batch_size=data.draw(batch_sizes, label="rebuild"))
    assert whole.position == n
    assert totals == whole.counters.as_dict()
    assert split == database.snapshot()


@PROPERTY_SETTINGS
@given(n=sizes, seed=seeds, first=batch_sizes, second=batch_sizes)
def test_a_second_rebuild_gives_an_identical_snapshot(
    database: Database, n: int, seed: int, first: int, second: int
) -> None:
    """Rebuilding the same log twice (any batch sizes) gives identical tables and counters."""
    path = database.tmp / "twice.ndjson"
    path.write_bytes(b"".join(_log(n, seed)))
    once = database.project(path, fresh=True, batch_size=first)
    before = database.snapshot()
    assert sum(len(rows) for name, rows in before.items() if name in ENTITY_NAMES) > 0
    again = database.project(path, fresh=True, batch_size=second)
    assert once.counters == again.counters
    assert once.position == again.position == n
    assert database.snapshot() == before


def _redelivery(kind: str, original: dict[str, Any], serial: int) -> bytes | None:
    """A copy of an earlier event: exact, stale (new event_id, old version) or a key retry."""
    copy = dict(original)
    copy["event_id"] = f"{original['event_id']}-re{serial}"
    if kind == "stale":
        if "idempotency_key" in copy:
            if serial % 2:
                del copy["idempotency_key"]
            else:
                copy["idempotency_key"] = f"{copy['idempotency_key']}-re{serial}"
    elif kind == "retry" and "idempotency_key" not in original:
        return None
    return orjson.dumps(copy) + b"\n"


redeliveries = st.lists(
    st.tuples(
        st.sampled_from(["duplicate", "stale", "retry"]),
        st.floats(min_value=0, max_value=1, exclude_max=True),  # which earlier line
        st.floats(min_value=0, max_value=1),  # how far after it
    ),
    min_size=1,
    max_size=30,
)


@PROPERTY_SETTINGS
@given(n=sizes, seed=seeds, inserts=redeliveries, first=batch_sizes, second=batch_sizes)
def test_duplicates_stale_redeliveries_and_retries_change_no_entity_table(
    database: Database,
    n: int,
    seed: int,
    inserts: list[tuple[str, float, float]],
    first: int,
    second: int,
) -> None:
    """Re-sent copies of earlier events, inserted anywhere after them, leave every entity row."""
    lines = _log(n, seed)
    decoded = [decode(i + 1, line.rstrip(b"\n")) for i, line in enumerate(lines)]
    valid = [i for i, item in enumerate(decoded) if isinstance(item, Event)]
    placed: list[tuple[tuple[int, int, int], bytes]] = [
        ((i, 0, 0), line) for i, line in enumerate(lines)
    ]
    added = 0
    for serial, (kind, which, after) in enumerate(inserts):
        if kind == "duplicate":
            index = int(which * len(lines))
            copy: bytes | None = lines[index]
        else:
            index = valid[int(which * len(valid))]
            copy = _redelivery(kind, orjson.loads(lines[index]), serial)
        if copy is None:
            continue
        after_index = index + round(after * (len(lines) - 1 - index))
        placed.append(((after_index, 1, serial), copy))
        added += 1
    placed.sort(key=lambda item: item[0])

    plain = database.tmp / "plain.ndjson"
    plain.write_bytes(b"".join(lines))
    database.project(plain, fresh=True, batch_size=first)
    expected = _entities(database)

    noisy: Path = database.tmp / "noisy.ndjson"
    noisy.write_bytes(b"".join(line for _, line in placed))
    result = database.project(noisy, fresh=True, batch_size=second)
    assert result.position == n + added
    assert _entities(database) == expected
