"""--redact-pii: keyed hashes instead of channel addresses and display names, joins intact."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import sqlalchemy as sa

from projections import redact
from tests.helpers import Database, append_log, cli, ev, write_log

KEY = "a-test-key-that-is-long-enough"
ENV = {"PROJECTIONS_REDACT_PII_KEY": KEY}
ADDRESS, NORMALIZED, NEW_NORMALIZED = "+1 (555) 010-2030", "15550102030", "15550109999"
NAME, NEW_NAME = "Ada Lovelace", "Ada King"
SECRETS = (ADDRESS, NORMALIZED, NEW_NORMALIZED, NAME, NEW_NAME, "Ada")


def hashed(value: str, key: str = KEY) -> str:
    """The documented hash, computed here without projections' code."""
    return "h:" + hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def _events() -> list[dict[str, Any] | str]:
    # A bad line that carries an address: quarantined, and must not keep it.
    bad = ev("ChannelMapped", "chn_2", kind="sms", address=ADDRESS, normalized=NORMALIZED)
    bad["version"] = "x"
    return [
        ev("ProviderConfigured", "prv_1", kind="sms"),
        ev(
            "ChannelMapped",
            "chn_1",
            kind="sms",
            address=ADDRESS,
            normalized=NORMALIZED,
            provider_id="prv_1",
        ),
        ev("ContactCreated", "con_1", display_name=NAME),
        ev("ConversationCreated", "cnv_1", channel_id="chn_1", contact_id="con_1", status="open"),
        ev("ContactCreated", "con_2", display_name=None),
        bad,
    ]


def _updates() -> list[dict[str, Any] | str]:
    return [
        ev("ChannelUpdated", "chn_1", 2, changed_fields={"normalized": NEW_NORMALIZED}),
        ev("ContactUpdated", "con_1", 2, changed_fields=["display_name"], display_name=NEW_NAME),
    ]


def _all_text(database: Database) -> str:
    """Every value of every table, as one string to search."""
    inspector = sa.inspect(database.engine)
    parts: list[str] = []
    with database.engine.connect() as connection:
        for table in inspector.get_table_names():
            if table in ("alembic_version", "event_log"):
                continue
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


def test_addresses_and_names_are_stored_as_keyed_hashes(database: Database) -> None:
    """Channel addresses, display names and their copies hold HMAC-SHA256 hashes, nothing else."""
    with redact.redacting(KEY.encode()):
        database.project(_events())
    channel = database.row("channel_mappings", "chn_1")
    contact = database.row("contacts", "con_1")
    conversation = database.row("conversations", "cnv_1")
    assert channel is not None and contact is not None and conversation is not None
    assert (channel["address"], channel["normalized"]) == (hashed(ADDRESS), hashed(NORMALIZED))
    assert contact["display_name"] == hashed(NAME)
    assert conversation["channel_address"] == hashed(NORMALIZED)
    assert conversation["contact_display_name"] == hashed(NAME)
    blank = database.row("contacts", "con_2")
    assert blank is not None and blank["display_name"] is None
    stored = _all_text(database)
    for secret in SECRETS:
        assert secret not in stored


def test_updates_are_hashed_and_copies_follow(database: Database) -> None:
    """changed_fields (object or list form) are hashed too, and the copies follow them."""
    log = write_log(database.tmp / "pii.ndjson", _events())
    with redact.redacting(KEY.encode()):
        database.project(log)
        append_log(log, _updates())
        database.project(log)
    conversation = database.row("conversations", "cnv_1")
    assert conversation is not None
    assert conversation["channel_address"] == hashed(NEW_NORMALIZED)
    assert conversation["contact_display_name"] == hashed(NEW_NAME)
    for secret in SECRETS:
        assert secret not in _all_text(database)


def test_joins_and_lookups_by_hash_work(database: Database) -> None:
    """The hash printed by `hash-pii` finds the channel, and joins on hashed columns match."""
    with redact.redacting(KEY.encode()):
        database.project(_events())
    done = cli("hash-pii", NORMALIZED, env=ENV)
    assert done.returncode == 0, done.stderr
    looked_up = done.stdout.strip()
    assert looked_up == hashed(NORMALIZED)
    with database.engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT c.conversation_id, m.channel_id FROM conversations c "
                "JOIN channel_mappings m ON m.normalized = c.channel_address "
                "JOIN contacts ct ON ct.display_name = c.contact_display_name "
                "WHERE m.normalized = :address"
            ),
            {"address": looked_up},
        ).all()
    assert [tuple(r) for r in found] == [("cnv_1", "chn_1")]


def test_quarantined_lines_keep_no_content(database: Database) -> None:
    """Under redaction a quarantined line keeps its position and reason, and only a hash."""
    with redact.redacting(KEY.encode()):
        database.project(_events())
    (quarantined,) = database.rows("quarantined_events")
    assert quarantined["position"] == 6
    assert quarantined["reason"] == "invalid_version"
    assert ADDRESS not in quarantined["raw"]
    assert quarantined["raw"].startswith("[redacted: ")


def test_without_redaction_values_are_kept(database: Database) -> None:
    """Redaction is off by default: addresses, names and raw lines are stored as sent."""
    database.project(_events())
    channel = database.row("channel_mappings", "chn_1")
    assert channel is not None and channel["normalized"] == NORMALIZED
    assert ADDRESS in database.rows("quarantined_events")[0]["raw"]


def test_redacting_from_the_command_line(database: Database) -> None:
    """rebuild --redact-pii with the key hashes; the env setting turns it on for run."""
    log = write_log(database.tmp / "pii.ndjson", _events())
    url = database.url_text
    done = cli("rebuild", "--source", str(log), "--database-url", url, "--redact-pii", env=ENV)
    assert done.returncode == 0, done.stderr
    assert database.row("contacts", "con_1")["display_name"] == hashed(NAME)  # type: ignore[index]
    append_log(log, _updates())
    env = {**ENV, "PROJECTIONS_REDACT_PII": "1"}
    done = cli("run", "--source", str(log), "--database-url", url, env=env)
    assert done.returncode == 0, done.stderr
    assert database.row("contacts", "con_1")["display_name"] == hashed(NEW_NAME)  # type: ignore[index]


def test_redaction_without_a_key_is_refused(database: Database) -> None:
    """--redact-pii without a key (or with a short one) exits 2 and writes nothing."""
    log = write_log(database.tmp / "pii.ndjson", _events())
    url = database.url_text
    for env in ({"PROJECTIONS_REDACT_PII_KEY": ""}, {"PROJECTIONS_REDACT_PII_KEY": "short"}):
        done = cli("run", "--source", str(log), "--database-url", url, "--redact-pii", env=env)
        assert done.returncode == 2, done.stderr
        assert "PROJECTIONS_REDACT_PII_KEY" in done.stderr
        assert "Traceback" not in done.stderr
    assert database.count("channel_mappings") == 0
    assert cli("hash-pii", "x", env={"PROJECTIONS_REDACT_PII_KEY": ""}).returncode == 2


def test_plain_and_hashed_values_never_mix(database: Database) -> None:
    """run refuses to add plain values to a redacted model and hashes to a plain one."""
    log = write_log(database.tmp / "pii.ndjson", _events())
    url = database.url_text
    assert cli("rebuild", "--source", str(log), "--database-url", url).returncode == 0
    append_log(log, _updates())
    done = cli("run", "--source", str(log), "--database-url", url, "--redact-pii", env=ENV)
    assert done.returncode == 2
    assert "rebuild" in done.stderr
    assert database.row("contacts", "con_1")["display_name"] == NAME  # type: ignore[index]
    done = cli("rebuild", "--source", str(log), "--database-url", url, "--redact-pii", env=ENV)
    assert done.returncode == 0, done.stderr
    append_log(log, [ev("ContactUpdated", "con_1", 3, changed_fields={"display_name": NAME})])
    done = cli("run", "--source", str(log), "--database-url", url)
    assert done.returncode == 2
    assert "--redact-pii" in done.stderr
    assert database.row("contacts", "con_1")["display_name"] == hashed(NEW_NAME)  # type: ignore[index]
