"""Each of the 21 events and its effect on the columns of its table (SPEC §5)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.helpers import T0, Database, ev


def at(seconds: float) -> datetime:
    """The timezone-aware UTC datetime an event built with `at=seconds` occurred at."""
    return T0 + timedelta(seconds=seconds)


def only(database: Database, table: str, key: str | tuple[str, str]) -> dict[str, Any]:
    """The row of `table` at `key`, which must exist."""
    row = database.row(table, key)
    assert row is not None, f"no {table} row {key!r}"
    return row


def assert_utc(value: datetime | None, expected: datetime) -> None:
    """A timestamp equals `expected` and is timezone-aware in UTC."""
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)
    assert value == expected


def channel(channel_id: str = "chn_1", version: int = 1, **fields: Any) -> dict[str, Any]:
    """A ChannelMapped event with sensible defaults."""
    body = {
        "kind": "sms",
        "address": "+1 (555) 0100",
        "normalized": "15550100",
        "provider_id": "prv_1",
        **fields,
    }
    return ev("ChannelMapped", channel_id, version, **body)


def conversation(conversation_id: str = "cnv_1", version: int = 1, **fields: Any) -> dict[str, Any]:
    """A ConversationCreated event with sensible defaults."""
    body = {"channel_id": "chn_1", "contact_id": "con_1", "status": "open", **fields}
    return ev("ConversationCreated", conversation_id, version, **body)


# --- customers ---------------------------------------------------------------------------


def test_customer_created_sets_name_status_and_bookkeeping(database: Database) -> None:
    """CustomerCreated makes an enabled customer with its name, version and timestamps."""
    created = ev("CustomerCreated", "cus_1", 1, name="Acme", at=100)
    result = database.project([created])
    row = only(database, "customers", "cus_1")
    assert result.counters.applied == 1
    assert row["name"] == "Acme"
    assert row["status"] == "enabled"
    assert row["status_reason"] is None
    assert row["version"] == 1
    assert row["last_event_id"] == created["event_id"]
    assert row["attributes"] == {}
    assert_utc(row["created_at"], at(100))
    assert_utc(row["updated_at"], at(100))


def test_customer_updated_changes_the_name(database: Database) -> None:
    """CustomerUpdated with changed_fields name renames the customer."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev("CustomerUpdated", "cus_1", 2, changed_fields={"name": "Acme Ltd"}),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert row["name"] == "Acme Ltd"
    assert row["status"] == "enabled"
    assert row["attributes"] == {}


def test_customer_updated_list_form_reads_values_from_the_payload(database: Database) -> None:
    """A changed_fields list names fields whose new values stand in the payload."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev(
                "CustomerUpdated",
                "cus_1",
                2,
                changed_fields=["name", "tier"],
                name="Acme Ltd",
                tier="gold",
            ),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert row["name"] == "Acme Ltd"
    assert row["attributes"] == {"tier": "gold"}


def test_unknown_changed_fields_merge_into_attributes_across_updates(database: Database) -> None:
    """Keys that are not updatable merge into attributes; later keys overwrite earlier ones."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev("CustomerUpdated", "cus_1", 2, changed_fields={"tier": "gold", "region": "eu"}),
            ev("CustomerUpdated", "cus_1", 3, changed_fields={"tier": "platinum", "seats": "9"}),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert row["name"] == "Acme"
    assert row["attributes"] == {"tier": "platinum", "region": "eu", "seats": "9"}


def test_non_string_attribute_values_are_kept_as_sent(database: Database) -> None:
    """An unknown changed_fields key keeps its JSON value (number, list, object) in attributes."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev(
                "CustomerUpdated",
                "cus_1",
                2,
                changed_fields={"limits": {"seats": 5}, "tags": ["a", "b"], "score": 3},
            ),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert row["attributes"] == {"limits": {"seats": 5}, "tags": ["a", "b"], "score": 3}


def test_customer_disabled_sets_status_and_reason(database: Database) -> None:
    """CustomerDisabled sets status disabled and status_reason to its reason."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev("CustomerDisabled", "cus_1", 2, reason="unpaid"),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert (row["status"], row["status_reason"]) == ("disabled", "unpaid")


def test_customer_enabled_without_reason_clears_the_reason(database: Database) -> None:
    """CustomerEnabled without a reason enables the customer with a null status_reason."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev("CustomerDisabled", "cus_1", 2, reason="unpaid"),
            ev("CustomerEnabled", "cus_1", 3),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert (row["status"], row["status_reason"]) == ("enabled", None)


def test_customer_enabled_with_reason_on_an_enabled_customer_sets_it(database: Database) -> None:
    """CustomerEnabled on an already enabled customer still applies and sets its reason."""
    enabled = ev("CustomerEnabled", "cus_1", 2, reason="verified", at=50)
    result = database.project([ev("CustomerCreated", "cus_1", 1, name="Acme", at=10), enabled])
    row = only(database, "customers", "cus_1")
    assert result.counters.applied == 2
    assert result.counters.noop == 0
    assert (row["status"], row["status_reason"]) == ("enabled", "verified")
    assert row["last_event_id"] == enabled["event_id"]
    assert_utc(row["updated_at"], at(50))


def test_customer_disabled_twice_keeps_the_latest_reason(database: Database) -> None:
    """A second CustomerDisabled applies again and replaces the reason (also with null)."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev("CustomerDisabled", "cus_1", 2, reason="unpaid"),
            ev("CustomerDisabled", "cus_1", 3, reason=None),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert (row["status"], row["status_reason"], row["version"]) == ("disabled", None, 3)


def test_customer_created_on_an_existing_disabled_customer_enables_it(
    database: Database,
) -> None:
    """CustomerCreated sets its initial status enabled also on a row that exists."""
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme"),
            ev("CustomerDisabled", "cus_1", 2, reason="unpaid"),
            ev("CustomerCreated", "cus_1", 3, name="Acme Again"),
        ]
    )
    row = only(database, "customers", "cus_1")
    assert (row["status"], row["status_reason"], row["name"]) == ("enabled", None, "Acme Again")


def test_customer_updated_for_a_never_created_customer_creates_it(database: Database) -> None:
    """An Updated event for an unknown customer creates the row with a null status."""
    updated = ev("CustomerUpdated", "cus_9", 1, changed_fields={"name": "Ghost", "tier": "x"}, at=7)
    database.project([updated])
    row = only(database, "customers", "cus_9")
    assert row["name"] == "Ghost"
    assert row["status"] is None
    assert row["attributes"] == {"tier": "x"}
    assert row["version"] == 1
    assert_utc(row["created_at"], at(7))


def test_customer_disabled_for_a_never_created_customer_creates_it(database: Database) -> None:
    """A status event for an unknown customer creates the row with that status and no name."""
    database.project([ev("CustomerDisabled", "cus_9", 1, reason="fraud")])
    row = only(database, "customers", "cus_9")
    assert (row["status"], row["status_reason"], row["name"]) == ("disabled", "fraud", None)


def test_bookkeeping_follows_the_first_and_last_applied_event(database: Database) -> None:
    """created_at is the first event's occurred_at; updated_at, version, last_event_id the last."""
    last = ev("CustomerDisabled", "cus_1", 3, at=300)
    database.project(
        [
            ev("CustomerCreated", "cus_1", 1, name="Acme", at=100),
            ev("CustomerUpdated", "cus_1", 2, changed_fields={"name": "B"}, at=200),
            last,
        ]
    )
    row = only(database, "customers", "cus_1")
    assert_utc(row["created_at"], at(100))
    assert_utc(row["updated_at"], at(300))
    assert row["version"] == 3
    assert row["last_event_id"] == last["event_id"]


def test_bookkeeping_moves_across_runs(database: Database) -> None:
    """An event applied in a later run moves updated_at and keeps created_at."""
    first = [ev("CustomerCreated", "cus_1", 1, name="Acme", at=100)]
    database.project(first)
    later = ev("CustomerUpdated", "cus_1", 2, changed_fields={"name": "B"}, at=900)
    database.project([*first, later])
    row = only(database, "customers", "cus_1")
    assert_utc(row["created_at"], at(100))
    assert_utc(row["updated_at"], at(900))
    assert (row["version"], row["last_event_id"], row["name"]) == (2, later["event_id"], "B")


def test_fractional_occurred_at_keeps_its_milliseconds(database: Database) -> None:
    """updated_at keeps the fraction of a second the event carries."""
    database.project([ev("CustomerCreated", "cus_1", 1, name="Acme", at=12.345)])
    row = only(database, "customers", "cus_1")
    assert_utc(row["updated_at"], at(12.345))


# --- contacts ----------------------------------------------------------------------------


def test_contact_created_sets_owner_name_and_active(database: Database) -> None:
    """ContactCreated makes an active contact with its customer and display name."""
    created = ev("ContactCreated", "con_1", 1, customer_id="cus_7", display_name="Ann", at=5)
    database.project([created])
    row = only(database, "contacts", "con_1")
    assert row["customer_id"] == "cus_7"
    assert row["display_name"] == "Ann"
    assert (row["status"], row["status_reason"], row["deleted_at"]) == ("active", None, None)
    assert row["version"] == 1
    assert row["last_event_id"] == created["event_id"]
    assert_utc(row["created_at"], at(5))


def test_contact_created_without_display_name_leaves_it_null(database: Database) -> None:
    """ContactCreated without the optional display_name gives a null display name."""
    database.project([ev("ContactCreated", "con_1", 1)])
    row = only(database, "contacts", "con_1")
    assert row["display_name"] is None
    assert row["status"] == "active"


def test_contact_updated_changes_display_name(database: Database) -> None:
    """ContactUpdated display_name changes the column; other keys go to attributes."""
    database.project(
        [
            ev("ContactCreated", "con_1", 1, display_name="Ann"),
            ev(
                "ContactUpdated",
                "con_1",
                2,
                changed_fields={"display_name": "Ann B", "locale": "fr"},
            ),
        ]
    )
    row = only(database, "contacts", "con_1")
    assert row["display_name"] == "Ann B"
    assert row["attributes"] == {"locale": "fr"}
    assert row["status"] == "active"


def test_contact_updated_can_clear_display_name(database: Database) -> None:
    """ContactUpdated with display_name null clears the column."""
    database.project(
        [
            ev("ContactCreated", "con_1", 1, display_name="Ann"),
            ev("ContactUpdated", "con_1", 2, changed_fields={"display_name": None}),
        ]
    )
    assert only(database, "contacts", "con_1")["display_name"] is None


def test_contact_deleted_keeps_the_row_with_deleted_at_and_reason(database: Database) -> None:
    """ContactDeleted marks the contact deleted, sets deleted_at and its reason."""
    database.project(
        [
            ev("ContactCreated", "con_1", 1, display_name="Ann", at=10),
            ev("ContactDeleted", "con_1", 2, reason="gdpr", at=20),
        ]
    )
    row = only(database, "contacts", "con_1")
    assert (row["status"], row["status_reason"], row["display_name"]) == (
        "deleted",
        "gdpr",
        "Ann",
    )
    assert_utc(row["deleted_at"], at(20))
    assert_utc(row["updated_at"], at(20))


def test_contact_deleted_without_reason_has_null_reason(database: Database) -> None:
    """ContactDeleted without a reason gives a null status_reason."""
    database.project([ev("ContactCreated", "con_1", 1), ev("ContactDeleted", "con_1", 2)])
    row = only(database, "contacts", "con_1")
    assert (row["status"], row["status_reason"]) == ("deleted", None)


def test_contact_created_on_a_deleted_contact_makes_it_active(database: Database) -> None:
    """ContactCreated on a deleted contact makes it active again and clears deleted_at."""
    again = ev("ContactCreated", "con_1", 3, display_name="Ann 2", at=30)
    result = database.project(
        [
            ev("ContactCreated", "con_1", 1, display_name="Ann", at=10),
            ev("ContactDeleted", "con_1", 2, reason="gdpr", at=20),
            again,
        ]
    )
    row = only(database, "contacts", "con_1")
    assert result.counters.applied == 3
    assert (row["status"], row["status_reason"], row["deleted_at"]) == ("active", None, None)
    assert row["display_name"] == "Ann 2"
    assert row["last_event_id"] == again["event_id"]
    assert_utc(row["created_at"], at(10))


def test_contact_updated_for_a_never_created_contact_creates_it(database: Database) -> None:
    """ContactUpdated for an unknown contact creates the row with its owner and a null status."""
    database.project(
        [
            ev(
                "ContactUpdated",
                "con_9",
                1,
                customer_id="cus_3",
                changed_fields={"display_name": "Zed"},
            )
        ]
    )
    row = only(database, "contacts", "con_9")
    assert (row["customer_id"], row["display_name"], row["status"]) == ("cus_3", "Zed", None)


def test_contact_deleted_for_a_never_created_contact_creates_it_deleted(
    database: Database,
) -> None:
    """ContactDeleted for an unknown contact creates a deleted row."""
    database.project([ev("ContactDeleted", "con_9", 1, at=40)])
    row = only(database, "contacts", "con_9")
    assert (row["status"], row["customer_id"], row["display_name"]) == ("deleted", "cus_1", None)
    assert_utc(row["deleted_at"], at(40))


# --- providers ---------------------------------------------------------------------------


def test_provider_configured_sets_owner_kind_and_status(database: Database) -> None:
    """ProviderConfigured makes a configured provider of its kind."""
    database.project([ev("ProviderConfigured", "prv_1", 1, customer_id="cus_2", kind="email")])
    row = only(database, "providers", "prv_1")
    assert (row["customer_id"], row["kind"], row["status"], row["status_reason"]) == (
        "cus_2",
        "email",
        "configured",
        None,
    )


def test_provider_updated_changes_kind_and_merges_attributes(database: Database) -> None:
    """ProviderUpdated kind changes the column; unknown keys merge into attributes."""
    database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, kind="sms"),
            ev("ProviderUpdated", "prv_1", 2, changed_fields={"kind": "voice", "vendor": "acme"}),
        ]
    )
    row = only(database, "providers", "prv_1")
    assert (row["kind"], row["status"]) == ("voice", "configured")
    assert row["attributes"] == {"vendor": "acme"}


def test_provider_enabled_sets_status(database: Database) -> None:
    """ProviderEnabled sets status enabled with a null reason when none is given."""
    database.project(
        [ev("ProviderConfigured", "prv_1", 1, kind="sms"), ev("ProviderEnabled", "prv_1", 2)]
    )
    row = only(database, "providers", "prv_1")
    assert (row["status"], row["status_reason"]) == ("enabled", None)


def test_provider_enabled_with_reason_sets_it(database: Database) -> None:
    """ProviderEnabled with a reason stores it in status_reason."""
    database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, kind="sms"),
            ev("ProviderEnabled", "prv_1", 2, reason="go-live"),
        ]
    )
    row = only(database, "providers", "prv_1")
    assert (row["status"], row["status_reason"]) == ("enabled", "go-live")


def test_provider_disabled_sets_status_and_reason(database: Database) -> None:
    """ProviderDisabled sets status disabled and its reason."""
    database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, kind="sms"),
            ev("ProviderEnabled", "prv_1", 2, reason="go-live"),
            ev("ProviderDisabled", "prv_1", 3, reason="outage"),
        ]
    )
    row = only(database, "providers", "prv_1")
    assert (row["status"], row["status_reason"]) == ("disabled", "outage")


def test_provider_disabled_on_a_disabled_provider_replaces_the_reason(
    database: Database,
) -> None:
    """ProviderDisabled applies even when already disabled and sets the new reason."""
    result = database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, kind="sms"),
            ev("ProviderDisabled", "prv_1", 2, reason="outage"),
            ev("ProviderDisabled", "prv_1", 3),
        ]
    )
    row = only(database, "providers", "prv_1")
    assert result.counters.applied == 3
    assert (row["status"], row["status_reason"]) == ("disabled", None)


def test_provider_configured_on_an_existing_provider_resets_status(database: Database) -> None:
    """ProviderConfigured on a disabled provider sets configured and its new kind."""
    database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, kind="sms"),
            ev("ProviderDisabled", "prv_1", 2, reason="outage"),
            ev("ProviderConfigured", "prv_1", 3, kind="mms"),
        ]
    )
    row = only(database, "providers", "prv_1")
    assert (row["kind"], row["status"], row["status_reason"]) == ("mms", "configured", None)


def test_provider_updated_for_a_never_created_provider_creates_it(database: Database) -> None:
    """ProviderUpdated for an unknown provider creates the row with its kind and no status."""
    database.project(
        [ev("ProviderUpdated", "prv_9", 1, customer_id="cus_4", changed_fields={"kind": "sms"})]
    )
    row = only(database, "providers", "prv_9")
    assert (row["customer_id"], row["kind"], row["status"]) == ("cus_4", "sms", None)


def test_provider_enabled_for_a_never_created_provider_creates_it(database: Database) -> None:
    """ProviderEnabled for an unknown provider creates an enabled row without a kind."""
    database.project([ev("ProviderEnabled", "prv_9", 1)])
    row = only(database, "providers", "prv_9")
    assert (row["kind"], row["status"], row["customer_id"]) == (None, "enabled", "cus_1")


# --- channels ----------------------------------------------------------------------------


def test_channel_mapped_sets_every_column(database: Database) -> None:
    """ChannelMapped sets customer, kind, address, normalized, provider and status mapped."""
    database.project([channel(customer_id="cus_5", kind="mms")])
    row = only(database, "channel_mappings", "chn_1")
    assert row["customer_id"] == "cus_5"
    assert (row["kind"], row["address"], row["normalized"], row["provider_id"]) == (
        "mms",
        "+1 (555) 0100",
        "15550100",
        "prv_1",
    )
    assert (row["status"], row["status_reason"]) == ("mapped", None)


def test_channel_updated_changes_each_updatable_column(database: Database) -> None:
    """ChannelUpdated changes kind, address, normalized and provider_id; others to attributes."""
    database.project(
        [
            channel(),
            ev(
                "ChannelUpdated",
                "chn_1",
                2,
                changed_fields={
                    "kind": "email",
                    "address": "Ann@Example.com",
                    "normalized": "ann@example.com",
                    "provider_id": "prv_2",
                    "label": "support",
                },
            ),
        ]
    )
    row = only(database, "channel_mappings", "chn_1")
    assert (row["kind"], row["address"], row["normalized"], row["provider_id"]) == (
        "email",
        "Ann@Example.com",
        "ann@example.com",
        "prv_2",
    )
    assert row["attributes"] == {"label": "support"}
    assert row["status"] == "mapped"


def test_channel_updated_list_form_changes_only_the_listed_fields(database: Database) -> None:
    """A changed_fields list updates only the listed fields, read from the payload."""
    database.project(
        [
            channel(),
            ev(
                "ChannelUpdated",
                "chn_1",
                2,
                changed_fields=["normalized"],
                normalized="15550199",
                address="ignored",
            ),
        ]
    )
    row = only(database, "channel_mappings", "chn_1")
    assert (row["normalized"], row["address"]) == ("15550199", "+1 (555) 0100")


def test_channel_unmapped_sets_status_and_reason(database: Database) -> None:
    """ChannelUnmapped keeps the row with status unmapped and its reason."""
    database.project([channel(), ev("ChannelUnmapped", "chn_1", 2, reason="ported")])
    row = only(database, "channel_mappings", "chn_1")
    assert (row["status"], row["status_reason"], row["normalized"]) == (
        "unmapped",
        "ported",
        "15550100",
    )


def test_channel_unmapped_on_an_unmapped_channel_sets_the_new_reason(
    database: Database,
) -> None:
    """ChannelUnmapped applies even when already unmapped, replacing the reason."""
    result = database.project(
        [
            channel(),
            ev("ChannelUnmapped", "chn_1", 2, reason="ported"),
            ev("ChannelUnmapped", "chn_1", 3),
        ]
    )
    row = only(database, "channel_mappings", "chn_1")
    assert result.counters.applied == 3
    assert (row["status"], row["status_reason"], row["version"]) == ("unmapped", None, 3)


def test_channel_mapped_remaps_an_unmapped_channel(database: Database) -> None:
    """ChannelMapped on an unmapped channel maps it again with its new values."""
    database.project(
        [
            channel(),
            ev("ChannelUnmapped", "chn_1", 2, reason="ported"),
            channel(
                "chn_1",
                3,
                kind="email",
                address="a@b.c",
                normalized="a@b.c",
                provider_id="prv_2",
            ),
        ]
    )
    row = only(database, "channel_mappings", "chn_1")
    assert (row["status"], row["status_reason"]) == ("mapped", None)
    assert (row["kind"], row["address"], row["normalized"], row["provider_id"]) == (
        "email",
        "a@b.c",
        "a@b.c",
        "prv_2",
    )


def test_channel_updated_for_a_never_created_channel_creates_it(database: Database) -> None:
    """ChannelUpdated for an unknown channel creates a row with only what it carries."""
    database.project([ev("ChannelUpdated", "chn_9", 1, changed_fields={"normalized": "1999"})])
    row = only(database, "channel_mappings", "chn_9")
    assert (row["normalized"], row["kind"], row["address"], row["status"]) == (
        "1999",
        None,
        None,
        None,
    )


def test_channel_unmapped_for_a_never_created_channel_creates_it(database: Database) -> None:
    """ChannelUnmapped for an unknown channel creates an unmapped row."""
    database.project([ev("ChannelUnmapped", "chn_9", 1, reason="gone")])
    row = only(database, "channel_mappings", "chn_9")
    assert (row["status"], row["status_reason"], row["provider_id"]) == ("unmapped", "gone", None)


# --- conversations -----------------------------------------------------------------------


def test_conversation_created_sets_its_columns(database: Database) -> None:
    """ConversationCreated sets customer, channel, contact, topic and status open."""
    database.project([conversation(customer_id="cus_6", topic="billing")])
    row = only(database, "conversations", "cnv_1")
    assert (row["customer_id"], row["channel_id"], row["contact_id"], row["topic"]) == (
        "cus_6",
        "chn_1",
        "con_1",
        "billing",
    )
    assert (row["status"], row["status_reason"]) == ("open", None)
    assert (row["closed_at"], row["archived_at"], row["participant_count"]) == (None, None, 0)


def test_conversation_created_without_topic_leaves_it_null(database: Database) -> None:
    """ConversationCreated without the optional topic gives a null topic."""
    database.project([conversation()])
    assert only(database, "conversations", "cnv_1")["topic"] is None


def test_conversation_created_closed_sets_closed_at(database: Database) -> None:
    """ConversationCreated with status closed sets closed_at to its occurred_at."""
    database.project([conversation(status="closed", at=60)])
    row = only(database, "conversations", "cnv_1")
    assert row["status"] == "closed"
    assert_utc(row["closed_at"], at(60))
    assert row["archived_at"] is None


def test_conversation_created_archived_sets_archived_at(database: Database) -> None:
    """ConversationCreated with status archived sets archived_at to its occurred_at."""
    database.project([conversation(status="archived", at=70)])
    row = only(database, "conversations", "cnv_1")
    assert row["status"] == "archived"
    assert_utc(row["archived_at"], at(70))
    assert row["closed_at"] is None


def test_conversation_created_on_a_closed_conversation_reopens_it(database: Database) -> None:
    """ConversationCreated status open on a closed conversation sets open and clears closed_at."""
    database.project(
        [
            conversation(),
            ev("ConversationClosed", "cnv_1", 2, reason="done"),
            conversation("cnv_1", 3, topic="again"),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"], row["closed_at"], row["topic"]) == (
        "open",
        None,
        None,
        "again",
    )


def test_conversation_updated_changes_topic_and_merges_attributes(database: Database) -> None:
    """ConversationUpdated topic changes the column; unknown keys merge into attributes."""
    database.project(
        [
            conversation(topic="billing"),
            ev(
                "ConversationUpdated",
                "cnv_1",
                2,
                changed_fields={"topic": "refund", "priority": "high"},
            ),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["topic"], row["status"]) == ("refund", "open")
    assert row["attributes"] == {"priority": "high"}


def test_conversation_updated_can_clear_topic(database: Database) -> None:
    """ConversationUpdated with topic null clears the column."""
    database.project(
        [
            conversation(topic="billing"),
            ev("ConversationUpdated", "cnv_1", 2, changed_fields={"topic": None}),
        ]
    )
    assert only(database, "conversations", "cnv_1")["topic"] is None


def test_conversation_closed_sets_status_reason_and_closed_at(database: Database) -> None:
    """ConversationClosed sets status closed, its reason and closed_at."""
    database.project([conversation(), ev("ConversationClosed", "cnv_1", 2, reason="solved", at=80)])
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"]) == ("closed", "solved")
    assert_utc(row["closed_at"], at(80))


def test_conversation_reopened_without_reason_clears_the_reason(database: Database) -> None:
    """ConversationReopened without a reason sets status open and a null reason."""
    database.project(
        [
            conversation(),
            ev("ConversationClosed", "cnv_1", 2, reason="solved"),
            ev("ConversationReopened", "cnv_1", 3),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"], row["closed_at"]) == ("open", None, None)


def test_conversation_reopened_with_reason_sets_it(database: Database) -> None:
    """ConversationReopened with a reason stores it in status_reason."""
    database.project(
        [
            conversation(),
            ev("ConversationClosed", "cnv_1", 2),
            ev("ConversationReopened", "cnv_1", 3, reason="customer replied"),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"]) == ("open", "customer replied")


def test_conversation_archived_sets_status_reason_and_archived_at(database: Database) -> None:
    """ConversationArchived sets status archived, its reason and archived_at."""
    database.project(
        [conversation(), ev("ConversationArchived", "cnv_1", 2, reason="retention", at=90)]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["status"], row["status_reason"]) == ("archived", "retention")
    assert_utc(row["archived_at"], at(90))


def test_conversation_updated_for_a_never_created_conversation_creates_it(
    database: Database,
) -> None:
    """ConversationUpdated for an unknown conversation creates a row with a null status."""
    database.project(
        [ev("ConversationUpdated", "cnv_9", 1, customer_id="cus_8", changed_fields={"topic": "t"})]
    )
    row = only(database, "conversations", "cnv_9")
    assert (row["customer_id"], row["topic"], row["status"], row["channel_id"]) == (
        "cus_8",
        "t",
        None,
        None,
    )
    assert row["participant_count"] == 0


def test_conversation_closed_for_a_never_created_conversation_creates_it(
    database: Database,
) -> None:
    """ConversationClosed for an unknown conversation creates a closed row."""
    database.project([ev("ConversationClosed", "cnv_9", 1, reason="spam", at=11)])
    row = only(database, "conversations", "cnv_9")
    assert (row["status"], row["status_reason"]) == ("closed", "spam")
    assert_utc(row["closed_at"], at(11))


# --- participants ------------------------------------------------------------------------


def test_participant_ids_on_creation_add_each_participant_once(database: Database) -> None:
    """participant_ids on ConversationCreated add each id once, active, with added_at."""
    database.project(
        [conversation(customer_id="cus_3", participant_ids=["u1", "u2", "u1", "u3"], at=15)]
    )
    rows = database.rows("conversation_participants")
    assert [r["participant_id"] for r in rows] == ["u1", "u2", "u3"]
    for row in rows:
        assert row["conversation_id"] == "cnv_1"
        assert row["customer_id"] == "cus_3"
        assert row["active"] is True
        assert_utc(row["added_at"], at(15))
        assert row["removed_at"] is None
    assert only(database, "conversations", "cnv_1")["participant_count"] == 3


def test_participant_added_creates_an_active_participant(database: Database) -> None:
    """ConversationParticipantAdded adds an active participant and counts it."""
    database.project(
        [
            conversation(customer_id="cus_3"),
            ev(
                "ConversationParticipantAdded",
                "cnv_1",
                2,
                customer_id="cus_3",
                participant_id="u1",
                at=25,
            ),
        ]
    )
    row = only(database, "conversation_participants", ("cnv_1", "u1"))
    assert (row["customer_id"], row["active"], row["removed_at"]) == ("cus_3", True, None)
    assert_utc(row["added_at"], at(25))
    assert only(database, "conversations", "cnv_1")["participant_count"] == 1


def test_participant_removed_keeps_an_inactive_row(database: Database) -> None:
    """ConversationParticipantRemoved keeps the row inactive with removed_at."""
    database.project(
        [
            conversation(participant_ids=["u1", "u2"], at=10),
            ev("ConversationParticipantRemoved", "cnv_1", 2, participant_id="u1", at=20),
        ]
    )
    row = only(database, "conversation_participants", ("cnv_1", "u1"))
    assert row["active"] is False
    assert_utc(row["added_at"], at(10))
    assert_utc(row["removed_at"], at(20))
    assert only(database, "conversation_participants", ("cnv_1", "u2"))["active"] is True
    assert only(database, "conversations", "cnv_1")["participant_count"] == 1


def test_participant_re_added_is_one_active_row_again(database: Database) -> None:
    """Add, remove, add again keeps one row, active, with the new added_at and no removed_at."""
    database.project(
        [
            conversation(at=10),
            ev("ConversationParticipantAdded", "cnv_1", 2, participant_id="u1", at=20),
            ev("ConversationParticipantRemoved", "cnv_1", 3, participant_id="u1", at=30),
            ev("ConversationParticipantAdded", "cnv_1", 4, participant_id="u1", at=40),
        ]
    )
    rows = database.rows("conversation_participants")
    assert len(rows) == 1
    assert (rows[0]["participant_id"], rows[0]["active"], rows[0]["removed_at"]) == (
        "u1",
        True,
        None,
    )
    assert_utc(rows[0]["added_at"], at(40))
    assert only(database, "conversations", "cnv_1")["participant_count"] == 1


def test_participant_add_remove_add_across_runs(database: Database) -> None:
    """Add, remove and re-add in separate runs give the same single active row and count."""
    log = [conversation(at=10)]
    database.project(log)
    log.append(ev("ConversationParticipantAdded", "cnv_1", 2, participant_id="u1", at=20))
    database.project(log)
    log.append(ev("ConversationParticipantRemoved", "cnv_1", 3, participant_id="u1", at=30))
    database.project(log)
    assert only(database, "conversations", "cnv_1")["participant_count"] == 0
    assert only(database, "conversation_participants", ("cnv_1", "u1"))["active"] is False
    log.append(ev("ConversationParticipantAdded", "cnv_1", 4, participant_id="u1", at=40))
    database.project(log)
    assert database.count("conversation_participants") == 1
    row = only(database, "conversation_participants", ("cnv_1", "u1"))
    assert (row["active"], row["removed_at"]) == (True, None)
    assert_utc(row["added_at"], at(40))
    assert only(database, "conversations", "cnv_1")["participant_count"] == 1


def test_adding_an_active_participant_does_not_count_it_twice(database: Database) -> None:
    """Adding a participant that is already active keeps one row, its added_at and the count."""
    database.project(
        [
            conversation(participant_ids=["u1"], at=10),
            ev("ConversationParticipantAdded", "cnv_1", 2, participant_id="u1", at=20),
        ]
    )
    row = only(database, "conversation_participants", ("cnv_1", "u1"))
    assert row["active"] is True
    assert_utc(row["added_at"], at(10))
    assert only(database, "conversations", "cnv_1")["participant_count"] == 1


def test_removing_a_never_added_participant_creates_an_inactive_row(
    database: Database,
) -> None:
    """Removing a participant never added creates an inactive row and leaves the count at 0."""
    database.project(
        [
            conversation(at=10),
            ev("ConversationParticipantRemoved", "cnv_1", 2, participant_id="u7", at=20),
        ]
    )
    row = only(database, "conversation_participants", ("cnv_1", "u7"))
    assert (row["active"], row["added_at"]) == (False, None)
    assert_utc(row["removed_at"], at(20))
    assert only(database, "conversations", "cnv_1")["participant_count"] == 0


def test_participant_count_counts_only_active_participants(database: Database) -> None:
    """participant_count equals the number of active participant rows."""
    database.project(
        [
            conversation(participant_ids=["u1", "u2", "u3"]),
            ev("ConversationParticipantRemoved", "cnv_1", 2, participant_id="u2"),
            ev("ConversationParticipantRemoved", "cnv_1", 3, participant_id="u2"),
            ev("ConversationParticipantAdded", "cnv_1", 4, participant_id="u4"),
            ev("ConversationParticipantRemoved", "cnv_1", 5, participant_id="u1"),
        ]
    )
    active = [
        r["participant_id"] for r in database.rows("conversation_participants") if r["active"]
    ]
    assert active == ["u3", "u4"]
    assert only(database, "conversations", "cnv_1")["participant_count"] == 2


def test_participants_of_two_conversations_are_separate(database: Database) -> None:
    """The same participant id in two conversations gives two rows, each counted in its own."""
    database.project(
        [
            conversation("cnv_1", participant_ids=["u1"]),
            conversation("cnv_2", participant_ids=["u1", "u2"]),
            ev("ConversationParticipantRemoved", "cnv_2", 2, participant_id="u1"),
        ]
    )
    assert only(database, "conversation_participants", ("cnv_1", "u1"))["active"] is True
    assert only(database, "conversation_participants", ("cnv_2", "u1"))["active"] is False
    assert only(database, "conversations", "cnv_1")["participant_count"] == 1
    assert only(database, "conversations", "cnv_2")["participant_count"] == 1


def test_participant_added_to_a_never_created_conversation_creates_both(
    database: Database,
) -> None:
    """ParticipantAdded for an unknown conversation creates it (null status) and the participant."""
    database.project(
        [
            ev(
                "ConversationParticipantAdded",
                "cnv_9",
                1,
                customer_id="cus_4",
                participant_id="u1",
            )
        ]
    )
    conversation_row = only(database, "conversations", "cnv_9")
    assert (conversation_row["status"], conversation_row["customer_id"]) == (None, "cus_4")
    assert conversation_row["participant_count"] == 1
    participant = only(database, "conversation_participants", ("cnv_9", "u1"))
    assert (participant["customer_id"], participant["active"]) == ("cus_4", True)


def test_participant_events_move_the_conversation_bookkeeping(database: Database) -> None:
    """A participant event applied to a conversation moves its version and updated_at."""
    added = ev("ConversationParticipantAdded", "cnv_1", 2, participant_id="u1", at=50)
    database.project([conversation(at=10), added])
    row = only(database, "conversations", "cnv_1")
    assert (row["version"], row["last_event_id"]) == (2, added["event_id"])
    assert_utc(row["updated_at"], at(50))
    assert_utc(row["created_at"], at(10))


def test_changed_fields_naming_a_non_updatable_column_go_to_attributes(
    database: Database,
) -> None:
    """A changed_fields key that names a column but is not updatable merges into attributes."""
    database.project(
        [
            conversation(topic="t"),
            ev(
                "ConversationUpdated",
                "cnv_1",
                2,
                changed_fields={
                    "channel_id": "chn_9",
                    "participant_count": "7",
                    "channel_kind": "email",
                    "topic": "u",
                },
            ),
        ]
    )
    row = only(database, "conversations", "cnv_1")
    assert (row["channel_id"], row["participant_count"], row["channel_kind"], row["topic"]) == (
        "chn_1",
        0,
        None,
        "u",
    )
    assert row["attributes"] == {
        "channel_id": "chn_9",
        "participant_count": "7",
        "channel_kind": "email",
    }


def test_channel_changed_fields_provider_kind_is_not_a_column_change(database: Database) -> None:
    """provider_kind sent in ChannelUpdated is not updatable: it lands in attributes."""
    database.project(
        [
            ev("ProviderConfigured", "prv_1", 1, kind="sms"),
            channel(),
            ev("ChannelUpdated", "chn_1", 2, changed_fields={"provider_kind": "voice"}),
        ]
    )
    row = only(database, "channel_mappings", "chn_1")
    assert row["provider_kind"] == "sms"
    assert row["attributes"] == {"provider_kind": "voice"}
