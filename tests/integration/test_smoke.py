"""A first end-to-end fold of a tiny log on both databases."""

from __future__ import annotations

from tests.helpers import Database, ev


def test_a_conversation_carries_its_channel_and_contact(database: Database) -> None:
    """A conversation created after its channel and contact copies their current values."""
    result = database.project(
        [
            ev("CustomerCreated", "cus_1", name="Acme"),
            ev("ProviderConfigured", "prv_1", kind="sms"),
            ev(
                "ChannelMapped",
                "chn_1",
                kind="sms",
                address="+1 555",
                normalized="1555",
                provider_id="prv_1",
            ),
            ev("ContactCreated", "con_1", display_name="Ann"),
            ev(
                "ConversationCreated",
                "cnv_1",
                channel_id="chn_1",
                contact_id="con_1",
                status="open",
            ),
        ]
    )
    assert result.counters.applied == 5
    conversation = database.row("conversations", "cnv_1")
    assert conversation is not None
    assert conversation["channel_kind"] == "sms"
    assert conversation["channel_address"] == "1555"
    assert conversation["contact_display_name"] == "Ann"
    assert database.row("channel_mappings", "chn_1")["provider_kind"] == "sms"  # type: ignore[index]
