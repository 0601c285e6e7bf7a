"""Deterministic generator of realistic NDJSON domain-event logs for benchmarks and tests."""

from __future__ import annotations

import heapq
import itertools
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = ["Noise", "generate"]

Event = dict[str, Any]

_CUS, _CON, _PRV, _CHN, _CNV = range(5)
_NEW, _DEFERRED = -1, -2  # statuses before creation: unseen, or already referenced by a child
_TYPES = ("Customer", "Contact", "Provider", "Channel", "Conversation")
_CREATED = tuple(["CustomerCreated", "ContactCreated", "ProviderConfigured", "ChannelMapped"])
_CREATED += ("ConversationCreated",)
_PREFIX = ("cus", "con", "prv", "chn", "cnv")
_ID_FIELD = ("customer_id", "contact_id", "provider_id", "channel_id", "conversation_id")
_SHARE = (0.05, 0.35, 0.08, 0.12, 0.40)  # share of the aggregates per family
_ACTIVITY = (1.5, 0.6, 0.8, 0.8, 1.2)  # how often a live aggregate of each family changes
# (family, status) -> options (cumulative probability, event name, new status, payload content)
_LIFE: dict[tuple[int, int], tuple[tuple[float, str, int, str], ...]] = {
    (_CUS, 0): ((0.25, "CustomerDisabled", 1, "reason"), (1, "CustomerUpdated", 0, "name")),
    (_CUS, 1): ((0.6, "CustomerEnabled", 0, "reason"), (1, "CustomerUpdated", 1, "name")),
    (_CON, 0): ((0.15, "ContactDeleted", 1, ""), (1, "ContactUpdated", 0, "display_name")),
    (_CON, 1): ((1, "ContactCreated", 0, "create"),),
    (_PRV, 0): (
        (0.6, "ProviderEnabled", 1, ""),
        (0.75, "ProviderDisabled", 2, "reason"),
        (1, "ProviderUpdated", 0, "kind"),
    ),
    (_PRV, 1): ((0.3, "ProviderDisabled", 2, "reason"), (1, "ProviderUpdated", 1, "kind")),
    (_PRV, 2): ((0.5, "ProviderEnabled", 1, ""), (1, "ProviderUpdated", 2, "kind")),
    (_CHN, 0): ((0.15, "ChannelUnmapped", 1, "reason"), (1, "ChannelUpdated", 0, "channel")),
    (_CHN, 1): ((0.85, "ChannelMapped", 0, "create"), (1, "ChannelUpdated", 1, "channel")),
    (_CNV, 0): (
        (0.35, "ConversationParticipantAdded", 0, "add"),
        (0.55, "ConversationParticipantRemoved", 0, "remove"),
        (0.8, "ConversationClosed", 1, "reason"),
        (0.82, "ConversationArchived", 2, "reason"),
        (1, "ConversationUpdated", 0, "topic"),
    ),
    (_CNV, 1): (
        (0.6, "ConversationReopened", 0, "reason"),
        (0.7, "ConversationArchived", 2, "reason"),
        (1, "ConversationUpdated", 1, "topic"),
    ),
}
_LIFE_BY = [[_LIFE.get((f, s), ()) for s in range(3)] for f in range(5)]
_PROVIDER_KINDS = ("sms", "sms", "mms", "email", "email", "voice", "voicemail")
_CHANNEL_KINDS = ("sms", "sms", "mms", "email", "email")
_REASONS = ("requested by customer", "billing", "policy review", "migration", "", "abuse report")
_WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Northwind", "Contoso", "Hooli", "Vandelay")
_SUFFIXES = ("Labs", "Inc", "GmbH", "Group", "Partners", "Health", "Logistics")
_FIRST = ("Alex", "Sam", "Robin", "Kim", "Jordan", "Ada", "Noor", "Lee", "Mika", "Tess")
_TOPICS = ("Billing question", "Delivery delay", "Password reset", "Order", "Feedback", "Renewal")
_EXTRAS = (("tier", "gold"), ("region", "eu-west"), ("plan", "pro"), ("locale", "en-US"))
_CYCLES = {  # kinds of noise, each an event name and aggregate type, or a kind of damage
    "unknown": "InvoiceIssued:Invoice PaymentCaptured:Payment MessageDelivered:Message"
    " CustomerTierChanged:Customer",
    "bad": "truncated nan array no_event_id naive_time string_version zero_version id_mismatch"
    " provider_kind owner_change status_change invalid_utf8 nul",
    "illegal": "archived deleted mismatch noop",
}
# Damage done with a fresh event: family, event name, field, value (None: another customer)
_DAMAGE: dict[str, tuple[int, str, str, Any]] = {
    "provider_kind": (_PRV, "ProviderConfigured", "kind", "fax"),
    "owner_change": (_CON, "ContactUpdated", "changed_fields", None),
    "status_change": (_CNV, "ConversationUpdated", "changed_fields", {"status": "archived"}),
    "invalid_utf8": (_CUS, "CustomerUpdated", "changed_fields", {"name": "@@UTF8@@"}),
    "nul": (_CUS, "CustomerUpdated", "changed_fields", {"name": "Acme\x00Corp"}),
}
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TRIPLES = tuple(a + b + c for a in _B32 for b in _B32 for c in _B32)  # 15 bits -> 3 characters
_SECONDS = tuple(f"{s:02d}." for s in range(60))
_MILLIS = tuple(f"{m:03d}Z" for m in range(1000))
_NL = orjson.OPT_APPEND_NEWLINE
_RING = 1000  # recent lines kept for duplicates, stale copies and retries
_OPEN_BUNDLES = 8  # customers whose aggregates are being created at the same time


@dataclass(frozen=True)
class Noise:
    """Per-emitted-event probabilities of the faults mixed into a generated log."""

    duplicates: float = 0.0  # a byte-identical copy of a recent line
    stale: float = 0.0  # a recent event again: new event_id and key, its old version
    retries: float = 0.0  # a recent event again: new event_id, same idempotency_key and version
    gaps: float = 0.0  # an event whose version skips one number
    unknown: float = 0.0  # a well-formed event whose name is none of the 21
    bad: float = 0.0  # a line to quarantine: bad JSON, NaN, bad field, invalid UTF-8, NUL...
    illegal: float = 0.0  # an illegal transition, a no-op, or another customer's customer_id
    out_of_order: float = 0.0  # a channel or conversation created before a parent it uses

    def __post_init__(self) -> None:
        """Reject rates outside 0..1 or adding up to more than 1."""
        rates = astuple(self)
        if any(not 0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0:
            raise ValueError(f"noise rates must lie in 0..1 and sum to at most 1: {self}")

    @classmethod
    def none(cls) -> Noise:
        """Return the noise of a clean log: every rate zero."""
        return cls()

    @classmethod
    def default(cls) -> Noise:
        """Return the small rates of a realistic production log."""
        return cls(0.01, 0.005, 0.005, 0.003, 0.005, 0.003, 0.002, 0.002)


def generate(
    events: int,
    *,
    seed: int = 42,
    aggregates: int | None = None,
    noise: Noise = Noise.none(),
    start: datetime | None = None,
) -> Iterator[bytes]:
    """Yield exactly `events` NDJSON lines (bytes ending in a newline), the same for a seed."""
    if events < 0 or (aggregates is not None and aggregates < 1):
        raise ValueError("events must be >= 0 and aggregates >= 1")
    world = _World(random.Random(seed), aggregates or max(1, events // 5), noise, start)
    return world.lines(events)


class _World:
    """The generator's model of every aggregate: owner, status, version and references."""

    def __init__(self, rng: random.Random, aggregates: int, noise: Noise, start: datetime | None):
        """Set the clock and the actors, then plan the aggregates."""
        self.rng, self.noise, self.rnd, self.bits = rng, noise, rng.random, rng.getrandbits
        begin = start or datetime(2025, 1, 1, tzinfo=UTC)
        begin = begin.replace(tzinfo=UTC) if begin.tzinfo is None else begin.astimezone(UTC)
        self.ms = (begin - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        self.minute_ms, self.minute_prefix, self.high, self.high_prefix = -60_000, "", -1, ""
        self.actors: list[str | Event] = [f"user:{rng.randrange(1, 500)}" for _ in range(52)]
        self.actors += ["system", "system", "svc:billing", "svc:sync", "svc:import", "scheduler"]
        self.actors += [{"type": "user", "id": f"u{rng.randrange(1, 500)}"} for _ in range(6)]
        self.tails = ["".join(rng.choices(_B32, k=16)) for _ in range(4096)]  # random ULID parts
        self.step, self.ooo, self.seq = 0, 0, 0
        pick = [rng.randrange(10_000) for _ in range(1024)]
        self.pools: dict[str, list[str | None]] = {
            "name": [f"{_WORDS[n % 8]} {_SUFFIXES[n % 7]} {n % 900 + 10}" for n in pick],
            "display_name": [f"{_FIRST[n % 10]} {_B32[10 + n % 22]}." for n in pick],
            "topic": [f"{_TOPICS[n % 6]} #{n}" for n in pick],
            "kind": list(_PROVIDER_KINDS),
            "reason": [r or None for r in _REASONS],
        }
        for field in ("display_name", "topic"):  # optional fields are now and then null
            self.pools[field][::16] = [None] * 64
        self.cuts = list(itertools.accumulate(astuple(noise)))
        self.ring: deque[bytes] = deque(maxlen=_RING)  # bytes: kept dicts would busy the GC
        self.heap: list[tuple[int, int, int, int]] = []  # (due step, seq, family, index)
        self.archived: list[int] = []
        self.cum: list[float] | None = None  # cumulative life-event weights of the families
        # Noise kinds come round in a shuffled cycle, so that even a small log shows each one.
        self.cycles = {
            k: itertools.cycle(rng.sample(v.split(), v.count(" ") + 1)) for k, v in _CYCLES.items()
        }
        self._plan(aggregates)

    def _plan(self, aggregates: int) -> None:
        """Size the families, give each aggregate an owner and queue per-customer creations."""
        n = [max(1, round(aggregates * _SHARE[_CUS])), 0, 0, 0, 0]
        rest = max(0, aggregates - n[_CUS])
        for fam in (_CON, _PRV, _CHN):
            n[fam] = round(rest * _SHARE[fam] / (1 - _SHARE[_CUS]))
        n[_CNV] = max(0, rest - n[_CON] - n[_PRV] - n[_CHN])
        if n[_PRV] == 0:
            n[_CON], n[_CHN] = n[_CON] + n[_CHN], 0
        if n[_CHN] == 0 or n[_CON] == 0:
            n[_CON], n[_CNV] = n[_CON] + n[_CNV], 0
        self.ids = [[f"{_PREFIX[f]}_{i + 1:06d}" for i in range(n[f])] for f in range(5)]
        self.ver = [[0] * n[f] for f in range(5)]
        self.st = [[_NEW] * n[f] for f in range(5)]
        self.owner = [list(range(n[_CUS]))] + [[0] * n[f] for f in range(1, 5)]
        self.kids: list[list[list[int]]] = [[[] for _ in range(n[_CUS])] for _ in range(5)]
        self.live: list[list[int]] = [[] for _ in range(5)]
        self.pos, self.kind = [0] * n[_CNV], [0] * n[_CHN]
        self.parts: list[list[str]] = [[] for _ in range(n[_CNV])]
        weight = [self.rng.paretovariate(1.2) for _ in range(n[_CUS])]
        members: list[list[tuple[int, int]]] = [[] for _ in range(n[_CUS])]
        has = [[False] * n[_CUS] for _ in range(5)]
        for fam, needs in ((_PRV, ()), (_CHN, (_PRV,)), (_CON, ()), (_CNV, (_CHN, _CON))):
            eligible = [c for c in range(n[_CUS]) if all(has[f][c] for f in needs)]
            spread = eligible[: n[fam]]
            if more := n[fam] - len(spread):
                spread += self.rng.choices(eligible, [weight[c] for c in eligible], k=more)
            for idx, c in enumerate(spread):
                self.owner[fam][idx] = c
                members[c].append((fam, idx))
                has[fam][c] = True
        self.bundles = [self._bundle(c, members[c]) for c in range(n[_CUS])]
        self.bptr = [0] * n[_CUS]
        self.active = list(range(min(_OPEN_BUNDLES, n[_CUS])))
        self.next_bundle, self.to_create = len(self.active), sum(n)

    def _bundle(self, c: int, members: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Order one customer's creations: itself, a provider, then a mix where use follows."""
        first = next((m for m in members if m[0] == _PRV), None)
        rest = [m for m in members if m is not first]
        self.rng.shuffle(rest)
        order, held, seen = [(_CUS, c)] + ([first] if first else []), [], set()
        for member in rest:
            if member[0] == _CNV and not (_CHN in seen and _CON in seen):
                held.append(member)
                continue
            order.append(member)
            seen.add(member[0])
            if held and _CHN in seen and _CON in seen:
                order, held = order + held, []
        return order + held

    def lines(self, events: int) -> Iterator[bytes]:
        """Yield the log one line a step: a due deferred creation, noise, or a normal event."""
        rnd, heap, ring, customers = self.rnd, self.heap, self.ring, self.live[_CUS]
        noisy = self.cuts[-1]
        for step in range(events):
            self.step = step
            if heap and heap[0][0] <= step:
                yield self._create(*heapq.heappop(heap)[2:])
                continue
            r = rnd()
            line = self._noise(r) if r < noisy and ring else None
            if line is not None:
                yield line
                continue
            left = self.to_create
            if left and (not customers or rnd() * (events - step) < left):
                yield self._create_next()
            else:
                yield self._life()

    def _clock(self) -> tuple[str, str]:
        """Advance the clock a few ms to seconds; return a ULID-shaped event_id and the time."""
        r = self.rnd()
        ms = self.ms = self.ms + 1 + int(r * r * r * 3000)
        rest = ms - self.minute_ms
        if rest >= 60_000:
            self.minute_ms, rest = ms - ms % 60_000, ms % 60_000
            moment = datetime.fromtimestamp(self.minute_ms // 1000, UTC)
            self.minute_prefix = moment.strftime("%Y-%m-%dT%H:%M:")
        if ms >> 15 != self.high:
            self.high, t = ms >> 15, _TRIPLES
            self.high_prefix = f"{_B32[ms >> 45]}{t[(ms >> 30) & 32767]}{t[(ms >> 15) & 32767]}"
        # The clock never repeats a millisecond, so the time part alone keeps event_ids unique.
        tail = self.tails[int(r * 16_777_216) & 4095]  # the low bits of r are as random
        event_id = self.high_prefix + _TRIPLES[ms & 32767] + tail
        return event_id, self.minute_prefix + _SECONDS[rest // 1000] + _MILLIS[rest % 1000]

    def _envelope(self, name: str, agg_type: str, agg_id: str, version: int, body: Event) -> Event:
        """Wrap family fields in an envelope, under payload, under data or at the top level."""
        event_id, occurred_at = self._clock()
        r = self.rnd()
        ev: Event = {"event_name": name, "event_id": event_id, "aggregate_type": agg_type}
        ev["aggregate_id"], ev["occurred_at"] = agg_id, occurred_at
        ev["actor"], ev["version"] = self.actors[int(r * 4096) & 63], version
        if r < 0.5:
            ev["idempotency_key"] = "idem-" + event_id
        r = r * 2 % 1  # still uniform: where the family's fields go
        if r < 0.85:
            ev["payload"] = body
        elif r < 0.95:
            ev["data"] = body
        else:
            ev.update(body)
        return ev

    def _emit(
        self, name: str, fam: int, idx: int, body: Event, gap: int = 0, keep: bool = True
    ) -> bytes:
        """Serialise the aggregate's next event, kept for later re-delivery when `keep`."""
        version = self.ver[fam][idx] = self.ver[fam][idx] + 1 + gap
        ev = self._envelope(name, _TYPES[fam], self.ids[fam][idx], version, body)
        line = orjson.dumps(ev, option=_NL)
        if keep:
            self.ring.append(line)
        return line

    def _draft(self, name: str, fam: int, idx: int, body: Event) -> Event:
        """Build the aggregate's next event without using up its version (for skipped lines)."""
        return self._envelope(name, _TYPES[fam], self.ids[fam][idx], self.ver[fam][idx] + 1, body)

    def _pick(self, items: list[int]) -> int:
        """Return a random element of a non-empty list."""
        return items[int(self.rnd() * len(items))]

    def _base(self, fam: int, idx: int) -> Event:
        """Return the family's id field and, below customers, the owner's customer_id."""
        body: Event = {_ID_FIELD[fam]: self.ids[fam][idx]}
        if fam != _CUS:
            body["customer_id"] = self.ids[_CUS][self.owner[fam][idx]]
        return body

    def _text(self, field: str) -> str | None:
        """Return a name, display_name, topic, kind or reason; the optional ones sometimes null."""
        pool = self.pools[field]
        return pool[int(self.rnd() * len(pool))]

    def _address(self, kind: int, body: Event) -> Event:
        """Set a fresh address and its normalized form for a channel kind."""
        n = int(self.rnd() * 10_000_000)
        if _CHANNEL_KINDS[kind] == "email":
            body["address"] = f"{_FIRST[n % 10]}.{n}@Example.com"
            body["normalized"] = body["address"].lower()
        else:
            body["normalized"] = digits = f"1555{n:07d}"
            body["address"] = f"+1 555 {digits[4:7]} {digits[7:]}" if n % 3 else "+" + digits
        return body

    def _create_next(self) -> bytes:
        """Pop the next creation from a random open customer bundle."""
        while True:
            slot = int(self.rnd() * len(self.active))
            b = self.active[slot]
            bundle, p = self.bundles[b], self.bptr[b]
            if p < len(bundle):
                break
            self.bundles[b] = []
            if self.next_bundle < len(self.bundles):
                self.active[slot], self.next_bundle = self.next_bundle, self.next_bundle + 1
            else:
                self.active[slot] = self.active[-1]
                self.active.pop()
        self.bptr[b], self.to_create = p + 1, self.to_create - 1
        return self._create(*bundle[p], b)

    def _defer(self, b: int, fams: tuple[int, ...]) -> tuple[int, int] | None:
        """Take a parent still planned in bundle `b` and create it a few events later instead."""
        if b < 0 or self.ooo <= 0:
            return None
        bundle, p = self.bundles[b], self.bptr[b]
        for j in range(p, min(len(bundle), p + 64)):
            if bundle[j][0] in fams:
                fam, idx = bundle.pop(j)
                self.to_create, self.ooo, self.seq = self.to_create - 1, self.ooo - 1, self.seq + 1
                due = self.step + 1 + int(self.rnd() * 20)
                heapq.heappush(self.heap, (due, self.seq, fam, idx))
                self.st[fam][idx] = _DEFERRED
                self.kids[fam][self.owner[fam][idx]].append(idx)
                return fam, idx
        return None

    def _create(self, fam: int, idx: int, b: int = -1) -> bytes:
        """Emit the creating event of a planned aggregate and make it live."""
        if self.st[fam][idx] == _NEW and fam != _CUS:
            self.kids[fam][self.owner[fam][idx]].append(idx)
        self.st[fam][idx] = 0
        body = self._creation(fam, idx, self._base(fam, idx), b)
        if self.st[fam][idx] == 2:
            self.archived.append(idx)
        else:
            if fam == _CNV:
                self.pos[idx] = len(self.live[fam])
            self.live[fam].append(idx)
            self.cum = None
        return self._emit(_CREATED[fam], fam, idx, body)

    def _creation(self, fam: int, idx: int, body: Event, b: int = -1) -> Event:
        """Fill the fields of a creating event, referencing parents of the same customer."""
        rnd, c = self.rnd, self.owner[fam][idx]
        if fam == _CHN:
            early = self._defer(b, (_PRV,))
            provider = early[1] if early else self._pick(self.kids[_PRV][c])
            kind = self.kind[idx] = int(rnd() * len(_CHANNEL_KINDS))
            body["kind"] = _CHANNEL_KINDS[kind]
            self._address(kind, body)["provider_id"] = self.ids[_PRV][provider]
        elif fam == _CNV:
            early = self._defer(b, (_CHN, _CON))
            for ref in (_CHN, _CON):
                ref_idx = early[1] if early and early[0] == ref else self._pick(self.kids[ref][c])
                body[_ID_FIELD[ref]] = self.ids[ref][ref_idx]
            if rnd() < 0.75:
                body["topic"] = self._text("topic")
            r = rnd()
            status = self.st[fam][idx] = 0 if r < 0.95 else 1 if r < 0.99 else 2
            body["status"] = ("open", "closed", "archived")[status]
            if rnd() < 0.4:
                people = {self._participant(idx) for _ in range(1 + int(r * 30) % 3)}
                body["participant_ids"] = sorted(people)
                self.parts[idx] = sorted(people)
        else:
            field = ("name", "display_name", "kind")[fam]
            body[field] = self._text(field)
        return body

    def _participant(self, idx: int) -> str:
        """Return one of the eight people who may take part in a conversation."""
        return f"usr_{(idx * 31 + int(self.rnd() * 8) * 977) % 100000:05d}"

    def _life(self, gap: int = 0) -> bytes:
        """Emit a legal next event for a random live aggregate, its version skipping `gap`."""
        rnd, live = self.rnd, self.live
        if self.cum is None:  # live sets changed: weigh each family by its live aggregates
            self.cum = list(
                itertools.accumulate(a * len(v) for a, v in zip(_ACTIVITY, live, strict=True))
            )
        fam = bisect_right(self.cum, rnd() * self.cum[-1])
        idx = live[fam][int(rnd() * len(live[fam]))]
        body: Event = {_ID_FIELD[fam]: self.ids[fam][idx]}
        if fam != _CUS:
            body["customer_id"] = self.ids[_CUS][self.owner[fam][idx]]
        r, parts = rnd(), self.parts[idx] if fam == _CNV else []
        for option in _LIFE_BY[fam][self.st[fam][idx]]:
            if r < option[0]:
                break
        _, name, status, what = option
        if what == "create":
            self._creation(fam, idx, body)
        elif what == "reason":
            if r * 10 % 1 < 0.8:
                body["reason"] = self._text("reason")
        elif what == "add" or what == "remove":
            active = parts[int(rnd() * len(parts))] if parts and what == "remove" else None
            body["participant_id"] = pid = active or self._participant(idx)
            if pid in parts:
                parts.remove(pid)
                name = "ConversationParticipantRemoved"
            else:
                parts.append(pid)
                name = "ConversationParticipantAdded"
        elif what == "channel":
            self._channel_change(idx, body)
        elif what:
            body["changed_fields"] = self._changed({what: self._text(what)})
        self.st[fam][idx] = status
        if status == 2 and fam == _CNV:  # archived is final: the conversation leaves the live set
            conversations, at = live[_CNV], self.pos[idx]
            last, self.cum = conversations.pop(), None
            if last != idx:
                conversations[at], self.pos[last] = last, at
            self.archived.append(idx)
        return self._emit(name, fam, idx, body, gap)

    def _channel_change(self, idx: int, body: Event) -> None:
        """Fill a ChannelUpdated: another provider, sms/mms kind, or address as a dict or a list."""
        x, kind, providers = self.rnd(), self.kind[idx], self.kids[_PRV][self.owner[_CHN][idx]]
        if x < 0.3 and len(providers) > 1:
            body["changed_fields"] = {"provider_id": self.ids[_PRV][self._pick(providers)]}
        elif x < 0.4 and _CHANNEL_KINDS[kind] != "email":
            self.kind[idx] = kind = 2 if _CHANNEL_KINDS[kind] == "sms" else 0
            body["changed_fields"] = {"kind": _CHANNEL_KINDS[kind]}
        elif x < 0.8:
            body["changed_fields"] = self._address(kind, {})
        else:
            self._address(kind, body)["changed_fields"] = ["address", "normalized"]

    def _changed(self, core: Event) -> Event:
        """Return changed_fields, now and then with an extra key bound for attributes."""
        r = self.rnd()
        if r >= 0.2:
            return core
        key, value = _EXTRAS[int(r * 20)]
        return {key: value} if r < 0.05 else {**core, key: value}

    def _noise(self, r: float) -> bytes | None:
        """Return the noise line that `r` falls on, or None when a normal event must follow."""
        t_dup, t_stale, t_retry, t_gap, t_unknown, t_bad, t_illegal, _ = self.cuts
        if r < t_dup:
            return self.ring[int(self.rnd() * len(self.ring))]
        if r < t_retry:
            return self._redeliver(retry=r >= t_stale)
        if r < t_gap:
            return self._life(gap=1)
        if r < t_unknown:
            return self._unknown()
        if r < t_bad:
            return self._bad()
        if r < t_illegal:
            return self._illegal()
        self.ooo += 1  # the next channel or conversation created uses a parent created later
        return None

    def _from_ring(self, keyed: bool = False) -> Event:
        """Return a recent event, preferring one with an idempotency_key when `keyed`."""
        for _ in range(8):
            ev: Event = orjson.loads(self.ring[int(self.rnd() * len(self.ring))])
            if not keyed or "idempotency_key" in ev:
                break
        return ev

    def _redeliver(self, retry: bool) -> bytes:
        """Re-send a recent event with a new event_id: a retry keeps its key, a stale copy not."""
        ev = self._from_ring(retry)
        ev["event_id"], _ = self._clock()
        if "idempotency_key" in ev and not retry:
            ev["idempotency_key"] = "idem-" + ev["event_id"]
        return orjson.dumps(ev, option=_NL)

    def _unknown(self) -> bytes:
        """Emit a well-formed event whose name this read model does not know."""
        name, agg_type = next(self.cycles["unknown"]).split(":")
        customer = self._pick(self.live[_CUS])
        body: Event = {"customer_id": self.ids[_CUS][customer]}
        if agg_type == "Customer":
            ev = self._draft(name, _CUS, customer, {**body, "tier": "gold"})
        else:
            agg_id = body[agg_type.lower() + "_id"] = f"{agg_type[:3].lower()}_{self.bits(20):07d}"
            body["amount_cents"] = self.bits(16)
            ev = self._envelope(name, agg_type, agg_id, 1 + self.bits(1), body)
        return orjson.dumps(ev, option=_NL)

    def _bad(self) -> bytes:
        """Emit a line the projector must quarantine, cycling through many kinds of damage."""
        kind = next(self.cycles["bad"])
        fam, name, key, value = _DAMAGE.get(kind, (_CUS, "", "", None))
        if name and self.live[fam]:
            idx = self._pick(self.live[fam])
            other = self.ids[_CUS][(self.owner[fam][idx] + 1) % len(self.ids[_CUS])]
            value = {"customer_id": other} if value is None else value
            ev = self._draft(name, fam, idx, {**self._base(fam, idx), key: value})
        else:
            ev = self._from_ring()
            ev["event_id"], _ = self._clock()
            kind = "zero_version" if name else kind
        if kind == "no_event_id":
            del ev["event_id"]
        elif kind == "naive_time":
            ev["occurred_at"] = ev["occurred_at"].removesuffix("Z")
        elif kind == "id_mismatch":
            ev["aggregate_id"] += "x"
        elif kind in ("string_version", "zero_version", "nan"):
            version = ev["version"]
            ev["version"] = {"string_version": str(version), "zero_version": 0}.get(kind, "@@NAN@@")
        line = orjson.dumps(ev)
        if kind == "truncated":
            line = line[: 10 + int(self.rnd() * (len(line) - 12))]
        elif kind == "array":
            line = b"[" + line + b"]"
        return line.replace(b'"@@NAN@@"', b"NaN").replace(b"@@UTF8@@", b"Caf\xe9 \xff") + b"\n"

    def _illegal(self) -> bytes | None:
        """Emit a valid event that cannot apply, or None while no aggregate allows one."""
        kind, live = next(self.cycles["illegal"]), self.live
        if kind == "noop" and self.archived:  # archiving an archived conversation: a no-op
            idx = self._pick(self.archived)
            body = {**self._base(_CNV, idx), "reason": self._text("reason")}
            return self._emit("ConversationArchived", _CNV, idx, body, keep=False)
        if kind == "archived" and self.archived:
            idx = self._pick(self.archived)
            name = ("ConversationReopened", "ConversationClosed")[self.bits(1)]
            body = {**self._base(_CNV, idx), "reason": self._text("reason")}
            return self._emit(name, _CNV, idx, body, keep=False)
        if kind == "deleted" and live[_CON]:
            for idx in [self._pick(live[_CON]) for _ in range(8)]:
                if self.st[_CON][idx] == 1:
                    body = {**self._base(_CON, idx), "changed_fields": {"display_name": "Kim L."}}
                    return self._emit("ContactUpdated", _CON, idx, body, keep=False)
        fam = (_CON, _PRV, _CHN, _CNV)[self.bits(2)]
        if len(live[_CUS]) < 2 or not live[fam]:
            return None
        idx = self._pick(live[fam])
        other = self._pick([c for c in live[_CUS][-8:] if c != self.owner[fam][idx]])
        body = {_ID_FIELD[fam]: self.ids[fam][idx], "customer_id": self.ids[_CUS][other]}
        field = ("", "display_name", "kind", "", "topic")[fam]
        change = self._address(self.kind[idx], {}) if fam == _CHN else {field: self._text(field)}
        body["changed_fields"] = change
        return self._emit(_TYPES[fam] + "Updated", fam, idx, body, keep=False)
