"""Denormalised columns equal the parent's current value, whatever the order (SPEC §5)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import dialect
from projections.projector import catch_up
from projections.sources.ndjson import NdjsonSource
from tests.helpers import Database, append_log, ev, write_log

BATCH_SIZES = [1, 1000]
Log = list[dict[str, Any]]


def provider(provider_id: str, version: int, kind: str) -> dict[str, Any]:
    """ProviderConfigured of a kind."""
    return ev("ProviderConfigured", provider_id, version, kind=kind)


def provider_kind(provider_id: str, version: int, kind: str) -> dict[str, Any]:
    """ProviderUpdated changing the kind."""
    return ev("ProviderUpdated", provider_id, version, changed_fields={"kind": kind})


def mapped(
    channel_id: str,
    version: int,
    provider_id: str,
    kind: str = "sms",
    normalized: str = "15550100",
    address: str = "+1 555 0100",
) -> dict[str, Any]:
    """ChannelMapped to a provider."""
    return ev(
        "ChannelMapped",
        channel_id,
        version,
        kind=kind,
        address=address,
        normalized=normalized,
        provider_id=provider_id,
    )


def channel_change(channel_id: str, version: int, **changes: Any) -> dict[str, Any]:
    """ChannelUpdated with the given changed_fields."""
    return ev("ChannelUpdated", channel_id, version, changed_fields=changes)


def contact(contact_id: str, version: int, display_name: str | None) -> dict[str, Any]:
    """ContactCreated with a display name."""
    return ev("ContactCreated", contact_id, version, display_name=display_name)


def rename_contact(contact_id: str, version: int, display_name: str | None) -> dict[str, Any]:
    """ContactUpdated changing the display name."""
    return ev("ContactUpdated", contact_id, version, changed_fields={"display_name": display_name})


def conversation(
    conversation_id: str, version: int, channel_id: str, contact_id: str
) -> dict[str, Any]:
    """ConversationCreated, open, on a channel with a contact."""
    return ev(
        "ConversationCreated",
        conversation_id,
        version,
        channel_id=channel_id,
        contact_id=contact_id,
        status="open",
    )


def project_in_runs(database: Database, parts: Sequence[Log], batch_size: int) -> None:
    """Project a log that grows by each part, one run per part."""
    log: Log = []
    for part in parts:
        log.extend(part)
        database.project(log, batch_size=batch_size)


def project_split(
    database: Database, first: Log, second: Log, *, later: bool, batch_size: int
) -> None:
    """Project `first` then `second`, in one run or in two."""
    parts = [first, second] if later else [first + second]
    project_in_runs(database, parts, batch_size)


def value(database: Database, table: str, key: str, column: str) -> Any:
    """One column of one row, which must exist."""
    row = database.row(table, key)
    assert row is not None, f"no {table} row {key!r}"
    return row[column]


def copies(database: Database, conversation_id: str) -> tuple[Any, Any, Any]:
    """A conversation's channel_kind, channel_address and contact_display_name."""
    row = database.row("conversations", conversation_id)
    assert row is not None
    return row["channel_kind"], row["channel_address"], row["contact_display_name"]


# --- provider_kind on channel_mappings ---------------------------------------------------


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_before_its_provider_gets_the_provider_kind(
    database: Database, batch_size: int
) -> None:
    """A channel mapped before its provider exists gets the kind once the provider is configured."""
    database.project(
        [mapped("chn_1", 1, "prv_1"), provider("prv_1", 1, "voice")], batch_size=batch_size
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "voice"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_provider_kind_is_null_until_the_provider_exists(
    database: Database, batch_size: int
) -> None:
    """provider_kind is NULL while the provider does not exist, then set in a later run."""
    log = [mapped("chn_1", 1, "prv_1")]
    database.project(log, batch_size=batch_size)
    assert value(database, "channel_mappings", "chn_1", "provider_kind") is None
    log.append(provider("prv_1", 1, "email"))
    database.project(log, batch_size=batch_size)
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "email"


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_provider_updated_kind_reaches_the_channel(
    database: Database, batch_size: int, later: bool
) -> None:
    """ProviderUpdated kind after the channel is mapped changes provider_kind."""
    project_split(
        database,
        [provider("prv_1", 1, "sms"), mapped("chn_1", 1, "prv_1")],
        [provider_kind("prv_1", 2, "mms")],
        later=later,
        batch_size=batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "mms"


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_provider_kind_reaches_every_channel_of_the_provider(
    database: Database, batch_size: int, later: bool
) -> None:
    """A provider's new kind is copied into all of its channels and no other."""
    project_split(
        database,
        [
            provider("prv_1", 1, "sms"),
            provider("prv_2", 1, "sms"),
            mapped("chn_1", 1, "prv_1"),
            mapped("chn_2", 1, "prv_1"),
            mapped("chn_3", 1, "prv_2"),
        ],
        [provider_kind("prv_1", 2, "voicemail")],
        later=later,
        batch_size=batch_size,
    )
    kinds = {r["channel_id"]: r["provider_kind"] for r in database.rows("channel_mappings")}
    assert kinds == {"chn_1": "voicemail", "chn_2": "voicemail", "chn_3": "sms"}


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_provider_configured_again_changes_the_copy(database: Database, batch_size: int) -> None:
    """A second ProviderConfigured with another kind is copied into its channels."""
    project_in_runs(
        database,
        [
            [provider("prv_1", 1, "sms"), mapped("chn_1", 1, "prv_1")],
            [provider("prv_1", 2, "email")],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "email"


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_repointed_to_another_provider_copies_its_kind(
    database: Database, batch_size: int, later: bool
) -> None:
    """ChannelUpdated provider_id to another provider copies that provider's kind."""
    project_split(
        database,
        [provider("prv_1", 1, "sms"), provider("prv_2", 1, "email"), mapped("chn_1", 1, "prv_1")],
        [channel_change("chn_1", 2, provider_id="prv_2")],
        later=later,
        batch_size=batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "email"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_repointed_channel_follows_only_its_new_provider(
    database: Database, batch_size: int
) -> None:
    """After re-pointing, changes of the old provider no longer reach the channel."""
    project_in_runs(
        database,
        [
            [
                provider("prv_1", 1, "sms"),
                provider("prv_2", 1, "email"),
                mapped("chn_1", 1, "prv_1"),
            ],
            [channel_change("chn_1", 2, provider_id="prv_2")],
            [provider_kind("prv_1", 2, "voice")],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "email"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_repointed_channel_follows_its_new_provider_changes(
    database: Database, batch_size: int
) -> None:
    """After re-pointing in one run, the new provider's later change reaches the channel."""
    first = [
        provider("prv_1", 1, "sms"),
        provider("prv_2", 1, "email"),
        mapped("chn_1", 1, "prv_1"),
        channel_change("chn_1", 2, provider_id="prv_2"),
        provider_kind("prv_1", 2, "voice"),
    ]
    project_in_runs(database, [first, [provider_kind("prv_2", 2, "mms")]], batch_size)
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "mms"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_repointed_in_the_same_batch_as_the_old_provider_changes(
    database: Database, batch_size: int
) -> None:
    """A channel re-pointed away while its old provider changes keeps the new provider's kind."""
    project_in_runs(
        database,
        [
            [
                provider("prv_1", 1, "sms"),
                provider("prv_2", 1, "email"),
                mapped("chn_1", 1, "prv_1"),
            ],
            [provider_kind("prv_1", 2, "voice"), channel_change("chn_1", 2, provider_id="prv_2")],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "email"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_repointed_to_a_missing_provider_has_null_kind(
    database: Database, batch_size: int
) -> None:
    """A channel pointed at a provider that does not exist has a NULL provider_kind."""
    project_in_runs(
        database,
        [
            [provider("prv_1", 1, "sms"), mapped("chn_1", 1, "prv_1")],
            [channel_change("chn_1", 2, provider_id="prv_404")],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") is None


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_provider_id_set_to_null_clears_the_kind(
    database: Database, batch_size: int, later: bool
) -> None:
    """ChannelUpdated provider_id null makes provider_kind NULL."""
    project_split(
        database,
        [provider("prv_1", 1, "sms"), mapped("chn_1", 1, "prv_1")],
        [channel_change("chn_1", 2, provider_id=None)],
        later=later,
        batch_size=batch_size,
    )
    row = database.row("channel_mappings", "chn_1")
    assert row is not None
    assert (row["provider_id"], row["provider_kind"]) == (None, None)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_remapped_to_another_provider_copies_its_kind(
    database: Database, batch_size: int
) -> None:
    """ChannelMapped again with another provider copies the new provider's kind."""
    project_in_runs(
        database,
        [
            [
                provider("prv_1", 1, "sms"),
                provider("prv_2", 1, "voice"),
                mapped("chn_1", 1, "prv_1"),
            ],
            [ev("ChannelUnmapped", "chn_1", 2), mapped("chn_1", 3, "prv_2")],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "voice"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_rejected_provider_update_does_not_reach_the_channel(
    database: Database, batch_size: int
) -> None:
    """A ProviderUpdated from another customer is rejected and leaves provider_kind."""
    project_in_runs(
        database,
        [
            [provider("prv_1", 1, "sms"), mapped("chn_1", 1, "prv_1")],
            [
                ev(
                    "ProviderUpdated",
                    "prv_1",
                    2,
                    customer_id="cus_2",
                    changed_fields={"kind": "email"},
                )
            ],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "sms"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_provider_kind_changed_and_changed_back_in_one_run(
    database: Database, batch_size: int
) -> None:
    """A kind changed and changed back within a run leaves the copy at the final kind."""
    project_in_runs(
        database,
        [
            [provider("prv_1", 1, "sms"), mapped("chn_1", 1, "prv_1")],
            [provider_kind("prv_1", 2, "email"), provider_kind("prv_1", 3, "sms")],
        ],
        batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "sms"


# --- channel_kind, channel_address and contact_display_name on conversations -------------


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_conversation_before_its_channel_and_contact(database: Database, batch_size: int) -> None:
    """A conversation created first gets the channel and contact values once they exist."""
    database.project(
        [
            conversation("cnv_1", 1, "chn_1", "con_1"),
            mapped("chn_1", 1, "prv_1", kind="email", normalized="ann@example.com"),
            contact("con_1", 1, "Ann"),
        ],
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1") == ("email", "ann@example.com", "Ann")


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_copies_are_null_while_the_parents_do_not_exist(
    database: Database, batch_size: int
) -> None:
    """channel_kind, channel_address and contact_display_name are NULL without parents."""
    log = [conversation("cnv_1", 1, "chn_1", "con_1")]
    database.project(log, batch_size=batch_size)
    assert copies(database, "cnv_1") == (None, None, None)
    log.append(mapped("chn_1", 1, "prv_1", kind="mms", normalized="1999"))
    database.project(log, batch_size=batch_size)
    assert copies(database, "cnv_1") == ("mms", "1999", None)
    log.append(contact("con_1", 1, "Bea"))
    database.project(log, batch_size=batch_size)
    assert copies(database, "cnv_1") == ("mms", "1999", "Bea")


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_conversation_after_its_parents_copies_them(database: Database, batch_size: int) -> None:
    """A conversation created after its channel and contact copies their values."""
    database.project(
        [
            mapped("chn_1", 1, "prv_1", kind="sms", normalized="15550100", address="+1 555 0100"),
            contact("con_1", 1, "Ann"),
            conversation("cnv_1", 1, "chn_1", "con_1"),
        ],
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1") == ("sms", "15550100", "Ann")


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_updated_normalized_and_kind_reach_the_conversation(
    database: Database, batch_size: int, later: bool
) -> None:
    """ChannelUpdated normalized and kind change channel_address and channel_kind."""
    project_split(
        database,
        [mapped("chn_1", 1, "prv_1"), conversation("cnv_1", 1, "chn_1", "con_1")],
        [channel_change("chn_1", 2, normalized="15550199", kind="mms")],
        later=later,
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1")[:2] == ("mms", "15550199")


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_address_copies_normalized_not_address(database: Database, batch_size: int) -> None:
    """Changing a channel's address alone leaves channel_address (the normalized value)."""
    project_in_runs(
        database,
        [
            [
                mapped("chn_1", 1, "prv_1", normalized="15550100", address="+1 555 0100"),
                conversation("cnv_1", 1, "chn_1", "con_1"),
            ],
            [channel_change("chn_1", 2, address="(555) 0100")],
        ],
        batch_size,
    )
    assert copies(database, "cnv_1")[1] == "15550100"


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_channel_normalized_set_to_null_clears_channel_address(
    database: Database, batch_size: int, later: bool
) -> None:
    """ChannelUpdated normalized null makes channel_address NULL and keeps channel_kind."""
    project_split(
        database,
        [mapped("chn_1", 1, "prv_1", kind="sms"), conversation("cnv_1", 1, "chn_1", "con_1")],
        [channel_change("chn_1", 2, normalized=None)],
        later=later,
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1")[:2] == ("sms", None)


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_contact_updated_display_name_reaches_the_conversation(
    database: Database, batch_size: int, later: bool
) -> None:
    """ContactUpdated display_name changes contact_display_name."""
    project_split(
        database,
        [contact("con_1", 1, "Ann"), conversation("cnv_1", 1, "chn_1", "con_1")],
        [rename_contact("con_1", 2, "Ann Smith")],
        later=later,
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1")[2] == "Ann Smith"


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_contact_display_name_set_to_null_clears_the_copy(
    database: Database, batch_size: int, later: bool
) -> None:
    """ContactUpdated display_name null makes contact_display_name NULL."""
    project_split(
        database,
        [contact("con_1", 1, "Ann"), conversation("cnv_1", 1, "chn_1", "con_1")],
        [rename_contact("con_1", 2, None)],
        later=later,
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1")[2] is None


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_contact_created_again_with_a_new_name_reaches_the_conversation(
    database: Database, batch_size: int
) -> None:
    """A deleted contact created again with a new display name is copied."""
    project_in_runs(
        database,
        [
            [contact("con_1", 1, "Ann"), conversation("cnv_1", 1, "chn_1", "con_1")],
            [ev("ContactDeleted", "con_1", 2), contact("con_1", 3, "Anna")],
        ],
        batch_size,
    )
    assert copies(database, "cnv_1")[2] == "Anna"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_deleted_contact_keeps_its_display_name_copy(database: Database, batch_size: int) -> None:
    """A deleted contact's row stays, so the conversation keeps its display name."""
    project_in_runs(
        database,
        [
            [contact("con_1", 1, "Ann"), conversation("cnv_1", 1, "chn_1", "con_1")],
            [ev("ContactDeleted", "con_1", 2)],
        ],
        batch_size,
    )
    assert copies(database, "cnv_1")[2] == "Ann"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_rejected_contact_update_does_not_reach_the_conversation(
    database: Database, batch_size: int
) -> None:
    """An illegal ContactUpdated on a deleted contact leaves contact_display_name."""
    project_in_runs(
        database,
        [
            [
                contact("con_1", 1, "Ann"),
                ev("ContactDeleted", "con_1", 2),
                conversation("cnv_1", 1, "chn_1", "con_1"),
            ],
            [rename_contact("con_1", 3, "Mallory")],
        ],
        batch_size,
    )
    assert copies(database, "cnv_1")[2] == "Ann"


@pytest.mark.parametrize("later", [False, True], ids=["same-run", "later-run"])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_parent_change_reaches_every_conversation(
    database: Database, batch_size: int, later: bool
) -> None:
    """A channel or contact change reaches all conversations that reference it, no others."""
    project_split(
        database,
        [
            mapped("chn_1", 1, "prv_1", normalized="111"),
            mapped("chn_2", 1, "prv_1", normalized="222"),
            contact("con_1", 1, "Ann"),
            contact("con_2", 1, "Bob"),
            conversation("cnv_1", 1, "chn_1", "con_1"),
            conversation("cnv_2", 1, "chn_1", "con_2"),
            conversation("cnv_3", 1, "chn_2", "con_1"),
        ],
        [channel_change("chn_1", 2, normalized="333"), rename_contact("con_1", 2, "Ann B")],
        later=later,
        batch_size=batch_size,
    )
    assert copies(database, "cnv_1") == ("sms", "333", "Ann B")
    assert copies(database, "cnv_2") == ("sms", "333", "Bob")
    assert copies(database, "cnv_3") == ("sms", "222", "Ann B")


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_conversation_created_again_on_another_channel_copies_it(
    database: Database, batch_size: int
) -> None:
    """ConversationCreated again with another channel and contact copies the new parents."""
    project_in_runs(
        database,
        [
            [
                mapped("chn_1", 1, "prv_1", kind="sms", normalized="111"),
                mapped("chn_2", 1, "prv_1", kind="email", normalized="b@c.d"),
                contact("con_1", 1, "Ann"),
                conversation("cnv_1", 1, "chn_1", "con_1"),
            ],
            [conversation("cnv_1", 2, "chn_2", "con_404")],
        ],
        batch_size,
    )
    assert copies(database, "cnv_1") == ("email", "b@c.d", None)


def test_a_conversation_read_back_reads_no_parent_while_its_references_stay(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later run changing a conversation but not its channel or contact reads neither:
    the copies it was read with are current, since this run changed no parent."""
    first = [
        mapped("chn_1", 1, "prv_1", kind="sms", normalized="111"),
        contact("con_1", 1, "Ann"),
        conversation("cnv_1", 1, "chn_1", "con_1"),
    ]
    database.project(first)
    read: list[str] = []
    real = dialect.fetch_rows

    def recording(connection: Any, table: Any, keys: Any) -> Any:
        read.append(table.name)
        return real(connection, table, keys)

    monkeypatch.setattr(dialect, "fetch_rows", recording)
    database.project(
        [*first, ev("ConversationUpdated", "cnv_1", 2, changed_fields={"topic": "billing"})]
    )
    assert read == ["conversations"]
    assert value(database, "conversations", "cnv_1", "topic") == "billing"
    assert copies(database, "cnv_1") == ("sms", "111", "Ann")


def test_repointed_and_back_in_later_transactions_copies_the_first_parents_again(
    database: Database,
) -> None:
    """Read back, repointed (one commit), then pointed at the parents it was read with (the
    next commit of the same run): the copies are those parents' again, not the others'."""
    first = [
        mapped("chn_1", 1, "prv_1", kind="sms", normalized="111"),
        mapped("chn_2", 1, "prv_1", kind="email", normalized="b@c.d"),
        contact("con_1", 1, "Ann"),
        contact("con_2", 1, "Bob"),
        conversation("cnv_1", 1, "chn_1", "con_1"),
    ]
    database.project(first)
    path = write_log(database.tmp / "log.ndjson", first)
    append_log(
        path,
        [conversation("cnv_1", 2, "chn_2", "con_2"), conversation("cnv_1", 3, "chn_1", "con_1")],
    )
    source = NdjsonSource(path)
    try:  # one event per batch, a commit after each: the run holds cnv_1 across both
        result = catch_up(
            database.engine, source, database.settings(batch_size=1, commit_seconds=0)
        )
    finally:
        source.close()
    assert result.counters.applied == 2
    assert copies(database, "cnv_1") == ("sms", "111", "Ann")


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_parent_changes_after_child_within_one_batch(database: Database, batch_size: int) -> None:
    """Parent created, child created, parent changed: the child holds the parent's last value."""
    database.project(
        [
            provider("prv_1", 1, "sms"),
            mapped("chn_1", 1, "prv_1", kind="sms", normalized="111"),
            contact("con_1", 1, "Ann"),
            conversation("cnv_1", 1, "chn_1", "con_1"),
            provider_kind("prv_1", 2, "voice"),
            channel_change("chn_1", 2, kind="email", normalized="x@y.z"),
            rename_contact("con_1", 2, "Zoe"),
        ],
        batch_size=batch_size,
    )
    assert value(database, "channel_mappings", "chn_1", "provider_kind") == "voice"
    assert copies(database, "cnv_1") == ("email", "x@y.z", "Zoe")


# --- property: any interleaving gives the parents' final values -------------------------

PROVIDERS = ["prv_1", "prv_2", "prv_3"]
CHANNELS = ["chn_1", "chn_2", "chn_3"]
CONTACTS = ["con_1", "con_2", "con_3"]
CONVERSATIONS = ["cnv_1", "cnv_2", "cnv_3"]
_names = itertools.count(1)

maybe_text = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
provider_op = st.one_of(
    st.tuples(st.just("kind"), st.sampled_from(["sms", "mms", "email", "voice", "voicemail"])),
    st.tuples(st.just("enable")),
)
channel_op = st.one_of(
    st.tuples(
        st.just("map"),
        st.sampled_from(PROVIDERS),
        st.sampled_from(["sms", "mms", "email"]),
        st.sampled_from(["111", "222", "333"]),
    ),
    st.tuples(st.just("provider_id"), st.one_of(st.none(), st.sampled_from(PROVIDERS))),
    st.tuples(st.just("kind"), st.sampled_from(["sms", "mms", "email"])),
    st.tuples(st.just("normalized"), st.one_of(st.none(), st.sampled_from(["444", "555"]))),
    st.tuples(st.just("address"), st.sampled_from(["addr-1", "addr-2"])),
)
contact_op = st.one_of(
    st.tuples(st.just("create"), maybe_text),
    st.tuples(st.just("rename"), maybe_text),
    st.tuples(st.just("delete")),
)
conversation_op = st.tuples(st.just("create"), st.sampled_from(CHANNELS), st.sampled_from(CONTACTS))


def histories(op: st.SearchStrategy[tuple[Any, ...]], ids: list[str]) -> st.SearchStrategy[Any]:
    """For each id, a list of operations (empty: the aggregate never appears)."""
    return st.fixed_dictionaries({i: st.lists(op, max_size=3) for i in ids})


def provider_events(provider_id: str, ops: list[tuple[Any, ...]]) -> tuple[Log, str | None]:
    """The provider's events in version order and its final kind."""
    events: Log = []
    kind: str | None = None
    for version, op in enumerate(ops, start=1):
        if op[0] == "kind":
            kind = op[1]
            events.append(
                provider(provider_id, version, kind)
                if version == 1
                else provider_kind(provider_id, version, kind)
            )
        else:
            events.append(ev("ProviderEnabled", provider_id, version))
    return events, kind


def channel_events(channel_id: str, ops: list[tuple[Any, ...]]) -> tuple[Log, dict[str, Any]]:
    """The channel's events in version order and its final columns."""
    events: Log = []
    state: dict[str, Any] = {"kind": None, "normalized": None, "provider_id": None}
    for version, op in enumerate(ops, start=1):
        if op[0] == "map":
            _, provider_id, kind, normalized = op
            state.update(kind=kind, normalized=normalized, provider_id=provider_id)
            events.append(mapped(channel_id, version, provider_id, kind, normalized))
        else:
            field, new = op
            if field in state:
                state[field] = new
            events.append(channel_change(channel_id, version, **{field: new}))
    return events, state


def contact_events(contact_id: str, ops: list[tuple[Any, ...]]) -> tuple[Log, str | None]:
    """The contact's events in version order and its final display name."""
    events: Log = []
    name: str | None = None
    deleted = False
    for version, op in enumerate(ops, start=1):
        if op[0] == "create":
            name, deleted = op[1], False
            events.append(contact(contact_id, version, op[1]))
        elif op[0] == "rename":
            if not deleted:  # renaming a deleted contact is an illegal transition
                name = op[1]
            events.append(rename_contact(contact_id, version, op[1]))
        else:
            deleted = True
            events.append(ev("ContactDeleted", contact_id, version))
    return events, name


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    provider_ops=histories(provider_op, PROVIDERS),
    channel_ops=histories(channel_op, CHANNELS),
    contact_ops=histories(contact_op, CONTACTS),
    conversation_ops=histories(conversation_op, CONVERSATIONS),
    batch_size=st.sampled_from([1, 2, 5, 1000]),
    data=st.data(),
)
def test_any_interleaving_gives_the_parents_final_values(
    database: Database,
    provider_ops: dict[str, list[tuple[Any, ...]]],
    channel_ops: dict[str, list[tuple[Any, ...]]],
    contact_ops: dict[str, list[tuple[Any, ...]]],
    conversation_ops: dict[str, list[tuple[Any, ...]]],
    batch_size: int,
    data: st.DataObject,
) -> None:
    """Shuffled across aggregates, every denormalised column is the parent's final value or NULL."""
    streams: list[Log] = []
    provider_kinds: dict[str, str | None] = {}
    for provider_id, ops in provider_ops.items():
        events, kind = provider_events(provider_id, ops)
        if events:
            streams.append(events)
            provider_kinds[provider_id] = kind
    channels: dict[str, dict[str, Any]] = {}
    for channel_id, ops in channel_ops.items():
        events, state = channel_events(channel_id, ops)
        if events:
            streams.append(events)
            channels[channel_id] = state
    names: dict[str, str | None] = {}
    for contact_id, ops in contact_ops.items():
        events, name = contact_events(contact_id, ops)
        if events:
            streams.append(events)
            names[contact_id] = name
    conversations: dict[str, tuple[str, str]] = {}
    for conversation_id, ops in conversation_ops.items():
        events = [
            conversation(conversation_id, version, channel_id, contact_id)
            for version, (_, channel_id, contact_id) in enumerate(ops, start=1)
        ]
        if events:
            streams.append(events)
            conversations[conversation_id] = (ops[-1][1], ops[-1][2])

    # Interleave: a shuffled list of stream numbers, one per event, each taking its next event.
    tokens = [n for n, stream in enumerate(streams) for _ in stream]
    order = data.draw(st.permutations(tokens), label="order")
    cursors = [iter(stream) for stream in streams]
    log = [next(cursors[n]) for n in order]

    result = database.project(
        log, fresh=True, name=f"log{next(_names)}.ndjson", batch_size=batch_size
    )
    assert result.counters.read == len(log)

    rows = {r["channel_id"]: r for r in database.rows("channel_mappings")}
    assert set(rows) == set(channels)
    for channel_id, state in channels.items():
        row = rows[channel_id]
        assert (row["kind"], row["normalized"], row["provider_id"]) == (
            state["kind"],
            state["normalized"],
            state["provider_id"],
        )
        expected = provider_kinds.get(state["provider_id"]) if state["provider_id"] else None
        assert row["provider_kind"] == expected, channel_id

    for conversation_id, (channel_id, contact_id) in conversations.items():
        found = database.row("conversations", conversation_id)
        assert found is not None
        assert (found["channel_id"], found["contact_id"]) == (channel_id, contact_id)
        channel_state = channels.get(channel_id)
        expected_copies = (
            channel_state["kind"] if channel_state else None,
            channel_state["normalized"] if channel_state else None,
            names.get(contact_id),
        )
        assert copies(database, conversation_id) == expected_copies, conversation_id
