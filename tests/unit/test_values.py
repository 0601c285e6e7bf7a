"""Values on their way to the drivers: the same text SQLAlchemy's column types would write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from projections.dialect.rows import _sqlite_timestamp
from projections.tables import UtcDateTime

_zones = st.just(UTC) | st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=_zones,
    )
)
def test_a_sqlite_timestamp_is_the_text_the_column_type_stores(value: datetime) -> None:
    """Any aware instant, with or without microseconds, in any offset."""
    dialect = sqlite.dialect()
    column = UtcDateTime()
    bind = column.dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    assert _sqlite_timestamp(value) == bind(value)  # the type converts to UTC itself


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_a_sqlite_timestamp_keeps_whole_seconds_to_six_digits(value: datetime) -> None:
    """An instant without microseconds still has its six fraction digits."""
    text = _sqlite_timestamp(value.replace(microsecond=0, tzinfo=UTC))
    assert text.endswith(".000000+00:00"), text


class _TestClock(datetime):
    """A datetime subclass, as test clocks and date libraries hand out."""


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_zones)
)
def test_a_sqlite_timestamp_of_a_datetime_subclass_is_the_same_text(value: datetime) -> None:
    """A subclass of datetime is written as the datetime itself would be."""
    instant = _TestClock.fromtimestamp(value.timestamp(), value.tzinfo)
    assert type(instant) is _TestClock
    assert _sqlite_timestamp(instant) == _sqlite_timestamp(value)
