"""Rows kept in memory across the batches of one transaction, and across transactions.

A batch used to read every row it touched from the database and write every row it
changed back at once: an aggregate with five events in five batches was read and
upserted five times. `Resident` keeps the rows a run has seen (slotted row objects,
`projections.batch`) and writes the changed ones back only when the run commits
(`flush`), which it does after many batches. Each batch folds into a `Pending` that
holds these very objects, with the same rules; a run whose transaction fails must
drop its `Resident`, as `catch_up` does by ending.

A table that is empty when the run starts is *complete*: every row it will ever
have is here, so a key not found here does not exist and costs no query (a rebuild
reads nothing back). Other tables load missing keys from the database once.

Between two transactions another writer may change the tables; the caller drops
everything (`forget`) unless the checkpoints are still the ones it wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from operator import attrgetter
from typing import Any, TypeVar

import sqlalchemy as sa

from projections import dialect, store
from projections.batch import VALUES, Held, Key, Pending, Row, row_from
from projections.events import ENUMERATED, Event
from projections.fold import COPIES, IdempotencyKey, aggregate_keys
from projections.store import Checkpoint
from projections.tables import ENTITY_TABLES, TABLES

# Columns whose values repeat across rows (owners, statuses, kinds): a run holds one
# string per distinct value, not one per row.
_SHARED_VALUES = frozenset(
    {"customer_id", "status", "status_reason", "kind", "provider_kind", "channel_kind"}
)
_T = TypeVar("_T")
_UNKNOWN: Any = object()  # a key this run knows nothing about


def _empty(connection: sa.Connection, table: str) -> bool:
    found = connection.execute(sa.select(sa.literal(1)).select_from(TABLES[table]).limit(1))
    return found.first() is None


class LedgerFilter:
    """Which event ids and idempotency triples this run may have put in the ledger.

    A fixed-size bit set of hashes: "no" is certain, "maybe" is asked of the database.
    Used while the ledger holds nothing but this run's events (a rebuild), it spares
    a lookup per event; its size does not grow with the log. Every item asked about is
    remembered at once, whether or not it goes on to the ledger: one pass per item, and
    an item that does not (a duplicate, a stale event) costs at most a lookup later.
    """

    BITS = 1 << 25  # 4 MiB; about 4 % false "maybe" after a million events and keys

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def maybe_then_add(self, items: list[_T]) -> list[_T]:
        """The items that may have been given before; all of them are remembered now."""
        bits, mask = self._bits, self.BITS - 1
        maybe = []
        for item in items:
            at = hash(item) & mask
            byte, bit = at >> 3, 1 << (at & 7)
            if bits[byte] & bit:
                maybe.append(item)
            else:
                bits[byte] |= bit
        return maybe


class Resident:
    """The rows of one run: current values by table and key, and which changed since the flush."""

    def __init__(self) -> None:
        self._few = {
            t.name: [c.name for c in t.columns if c.name in _SHARED_VALUES] for t in ENTITY_TABLES
        }
        # The run's own table of those strings (sys.intern would keep them for the process
        # on some Python versions; this goes with the run).
        self._strings: dict[str, str] = dict(ENUMERATED)
        self.rows: dict[str, Held] = {t.name: Held() for t in ENTITY_TABLES}
        # Rows changed since the flush; not kept for a table still empty (all its rows are).
        self.dirty: dict[str, set[Key]] = {t.name: set() for t in ENTITY_TABLES}
        self.empty = dict.fromkeys(self.rows, False)  # nothing of this run's in the table yet
        self.changed_parents: dict[str, set[Key]] = defaultdict(set)
        self.ledger: LedgerFilter | None = None  # set while the ledger holds only this run's
        # The transaction's checkpoints as its batches moved them; written by flush.
        self.checkpoints: dict[str, Checkpoint] | None = None
        self.moved: set[str] = set()
        self._worker: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        copied: dict[str, set[str]] = defaultdict(set)  # parent columns children copy
        self._children: dict[str, set[str]] = defaultdict(set)
        self._references: dict[str, list[str]] = defaultdict(list)  # child: its reference columns
        for child, reference, parent, columns in COPIES:
            copied[parent].update(columns.values())
            self._children[parent].add(child)
            self._references[child].append(reference)
        # Per child table and reference column: the reference of each row as read from the
        # database, whose copies were current then (see `_resolve_copies`).
        self._read_refs: dict[tuple[str, str], dict[Key, Any]] = {
            (child, reference): {} for child, reference, _, _ in COPIES
        }
        # Per parent table: how to read the columns children copy off a row.
        self._copied = {parent: attrgetter(*sorted(names)) for parent, names in copied.items()}

    # --- the write in flight ----------------------------------------------------------

    def submit(self, write: Callable[[], None]) -> None:
        """Run `write` on the connection in the background while the next batch is folded.

        At most one write is in flight; every other use of the connection waits for it
        (`settle`), so the order of statements is the order of the calls.
        """
        self.settle()
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="projections-writer")
        self._writing = self._worker.submit(write)

    def settle(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def close(self) -> None:
        """Wait for the write in flight (ignoring its error: one is already on its way)."""
        if self._writing is not None:
            wait([self._writing])
            self._writing = None
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def start(self, connection: sa.Connection) -> None:
        """Mark the tables that are empty now: their rows will all pass through here."""
        if self.ledger is None and _empty(connection, "processed_events"):
            self.ledger = LedgerFilter()
        for name in self.rows:
            if self.rows[name]:
                continue
            self.rows[name].complete = self.empty[name] = _empty(connection, name)

    def forget(self, *, ledger: bool = True) -> None:
        """Drop every row (after a flush): the database is the only copy again."""
        for name in self.rows:
            self.rows[name].clear()
            self.rows[name].complete = self.empty[name] = False
        for refs in self._read_refs.values():
            refs.clear()
        self._strings = dict(ENUMERATED)
        if ledger:
            self.ledger = None

    def seen_before(
        self, connection: sa.Connection, event_ids: list[str], triples: list[IdempotencyKey]
    ) -> tuple[set[str], set[IdempotencyKey]]:
        """Which event ids and idempotency triples are in the ledger already."""
        if (ledger := self.ledger) is not None:  # every event asked about may be in it next
            event_ids, triples = ledger.maybe_then_add(event_ids), ledger.maybe_then_add(triples)
            if not event_ids and not triples:
                return set(), set()
        self.settle()
        return store.seen_before(connection, event_ids, triples)

    # --- one batch ------------------------------------------------------------------------

    def pending(self) -> Pending:
        """The state a batch folds into: the held rows themselves while every table is empty.

        Then every row the run will have is here, and nothing but this run writes the
        tables (a rebuild's first transaction): a key not held is a row that does not
        exist, so there is nothing to load per batch and nothing to hand back.
        """
        if all(self.empty.values()):
            return Pending(rows=self.rows, strings=self._strings)
        return Pending(strings=self._strings)

    def load(self, connection: sa.Connection, state: Pending, events: list[Event]) -> None:
        """Put the rows the batch's events may read or change into its state.

        From here, else from the database. The batch folds into the very objects held
        here; parents' copied columns are noted as they were, to tell which parents
        changed them (`absorb`).
        """
        if state.rows is self.rows:
            return  # the batch folds into the held rows themselves
        missing: dict[str, set[Key]] = defaultdict(set)
        pending, rows = state.rows, self.rows
        for name, key in aggregate_keys(events):
            held = pending[name]
            if key in held:
                continue
            row = rows[name].get(key, _UNKNOWN)
            if row is _UNKNOWN:
                if not rows[name].complete:
                    missing[name].add(key)
                    continue
                row = None
            held[key] = row
        for name, wanted in missing.items():
            self.fetch(connection, name, wanted)
            held, kept = pending[name], rows[name]
            for key in wanted:
                held[key] = kept[key]
        for parent, pick in self._copied.items():
            if all(self.empty[child] for child in self._children[parent]):
                continue  # every child row is held and written whole: no change to track
            state.original[parent] = {
                key: pick(row) for key, row in pending[parent].items() if row is not None
            }

    def fetch(self, connection: sa.Connection, name: str, keys: set[Key]) -> None:
        """Read rows from the database into this store (None for the keys it lacks)."""
        self.settle()
        table = TABLES[name]
        key_columns = [c.name for c in table.primary_key.columns]
        rows = self.rows[name]
        read_refs = [(ref, self._read_refs[name, ref]) for ref in self._references.get(name, ())]
        for found in dialect.fetch_rows(connection, table, sorted(keys)):
            key: Key = (
                found[key_columns[0]]
                if len(key_columns) == 1
                else (found[key_columns[0]], found[key_columns[1]])
            )
            rows[key] = self._shared(name, row_from(name, found))
            for reference, refs in read_refs:
                refs[key] = found[reference]
        for key in keys:
            rows.setdefault(key, None)

    def absorb(self, state: Pending) -> None:
        """Take the batch's new rows, and note parents whose copied columns changed."""
        for parent, original in state.original.items():
            pick, rows, changed = self._copied[parent], state.rows[parent], set()
            for key in state.dirty[parent]:
                row = rows[key]
                if row is not None and original.get(key, _UNKNOWN) != pick(row):
                    changed.add(key)
            self.changed_parents[parent] |= changed
        if state.rows is self.rows:
            return  # folded in place, into tables still empty: every row held is changed
        for name, keys in state.dirty.items():
            kept, pending = self.rows[name], state.rows[name]
            for key in keys:
                if (row := pending[key]) is not None:
                    kept[key] = row
            if not self.empty[name]:  # in a table still empty, every row held is changed
                self.dirty[name] |= keys

    def _shared(self, name: str, row: Row) -> Row:
        """Make a row read back hold one object per distinct value of its few-valued columns.

        Handlers share the values they set themselves (`Pending.share`).
        """
        strings = self._strings
        for column in self._few[name]:
            if (value := getattr(row, column)).__class__ is str:
                setattr(row, column, strings.setdefault(value, value))
        return row

    # --- writing back ---------------------------------------------------------------------

    def flush(self, connection: sa.Connection) -> None:
        """Write every changed row (copies of parent columns current) and the checkpoints."""
        self.settle()
        self._resolve_copies(connection)
        for table in ENTITY_TABLES:
            name = table.name
            rows, keys = self.rows[name], self.dirty[name]
            written = rows.keys() if self.empty[name] else keys
            ordered = [row for key in sorted(written) if (row := rows[key]) is not None]
            if ordered:  # each row's values are made as it is written, not all at once
                values = map(VALUES[name], ordered)
                dialect.write_values(connection, table, values, upsert=not self.empty[name])
                self.empty[name] = False
            keys.clear()
        for child, reference, parent, columns in COPIES:
            changed = self.changed_parents.get(parent)
            if not changed or self.rows[child].complete:
                continue  # a complete child table had all its rows refreshed above
            # Child rows never loaded by this run still hold the old values.
            names = tuple(sorted(columns))
            read = attrgetter(*(columns[n] for n in names))
            parents = self.rows[parent]
            copies = [
                (key, *((read(current),) if len(names) == 1 else read(current)))
                for key in sorted(changed)
                if (current := parents[key]) is not None
            ]
            dialect.update_copies(connection, child, reference, names, copies)
        self.changed_parents.clear()
        if self.checkpoints is not None:
            store.write_checkpoints(connection, [self.checkpoints[n] for n in sorted(self.moved)])
        self.checkpoints, self.moved = None, set()

    def _resolve_copies(self, connection: sa.Connection) -> None:
        """Copy parent columns into changed child rows and held children of changed parents.

        Done once per flush rather than per batch: handlers never read the copies.
        """
        for child, reference, parent, columns in COPIES:
            pairs = list(columns.items())
            children, parents, dirty = self.rows[child], self.rows[parent], self.dirty[child]
            # A table still empty has every held row written: visit them all, in place, with
            # no set of targets and nothing to mark (a set per table was the flush's peak).
            whole = self.empty[child]
            targets: Iterable[tuple[Key, Row | None]]
            if whole:
                targets = children.items()
            else:
                keys = set(dirty)
                if changed := self.changed_parents.get(parent):
                    keys.update(
                        key
                        for key, row in children.items()
                        if row is not None and getattr(row, reference) in changed
                    )
                targets = [(key, children[key]) for key in keys]
            # A row read from the database had current copies then (every write keeps them
            # so, a one-projector rebuild's swap included). While its reference is
            # the one it was read with and its parent is not held (so this run has not
            # changed it), they still are: only rows created or repointed need the parent.
            partial = not self.rows[parent].complete
            if partial:
                read_refs = self._read_refs[child, reference]
                wanted: set[Key] = set()
                for key, row in targets:
                    if row is not None:
                        ref = getattr(row, reference)
                        if (
                            ref is not None
                            and ref not in parents
                            and read_refs.get(key, _UNKNOWN) != ref
                        ):
                            wanted.add(ref)
                if wanted:
                    self.fetch(connection, parent, wanted)
            for key, row in targets:
                if row is None:
                    continue
                ref = getattr(row, reference)
                if partial:
                    if ref is not None and ref not in parents:
                        continue  # read with this reference, parent unchanged: copies current
                    read_refs.pop(key, None)  # its copies are its held parent's from now on
                source = parents.get(ref) if ref is not None else None
                for target, origin in pairs:
                    value = None if source is None else getattr(source, origin)
                    if getattr(row, target) != value:
                        setattr(row, target, value)
                        if not whole:
                            dirty.add(key)
