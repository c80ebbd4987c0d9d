"""Report periods are calendar periods in the person's timezone (reports/periods.py)."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from reports.periods import (
    UnknownTimezone,
    period_containing,
    periods_ended,
    timezone_checked,
)


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "hours"),
    [
        (date(2026, 3, 29), 23),  # Europe/Paris moves its clocks forward
        (date(2026, 10, 25), 25),  # and back
        (date(2026, 6, 1), 24),
    ],
)
def test_a_day_runs_from_local_midnight_to_the_next_whatever_its_length(day, hours):
    # given a moment at noon, Paris time, on a day whose length varies with daylight saving
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC) - timedelta(hours=1)
    # when its daily period is asked for
    period = period_containing(noon, frequency="daily", timezone="Europe/Paris")
    # then it covers that local day, midnight to midnight
    assert period.first_day == period.last_day == day
    assert period.end - period.start == timedelta(hours=hours)
    assert period.start.astimezone(ZoneInfo("Europe/Paris")).hour == 0


def test_a_moment_belongs_to_the_day_of_the_persons_timezone_not_to_utcs():
    # given 11:30 UTC on 1 March, which is already 2 March in Auckland (UTC+13)
    moment = utc(2026, 3, 1, 11, 30)
    # then the daily periods differ by timezone, and the weekly and monthly ones too
    assert period_containing(moment, frequency="daily", timezone="UTC").first_day == date(
        2026, 3, 1
    )
    auckland = period_containing(moment, frequency="daily", timezone="Pacific/Auckland")
    assert auckland.first_day == date(2026, 3, 2)
    assert auckland.start == utc(2026, 3, 1, 11)
    monthly = period_containing(moment, frequency="monthly", timezone="Pacific/Auckland")
    assert (monthly.first_day, monthly.last_day) == (date(2026, 3, 1), date(2026, 3, 31))
    in_utc = period_containing(moment, frequency="monthly", timezone="UTC")
    assert (in_utc.first_day, in_utc.last_day) == (date(2026, 3, 1), date(2026, 3, 31))
    assert in_utc.start - monthly.start == timedelta(hours=13)


def test_a_week_runs_monday_to_monday_and_a_month_its_calendar_days():
    # given a Sunday evening in New York, which is already Monday in UTC
    moment = utc(2026, 11, 2, 2)
    week = period_containing(moment, frequency="weekly", timezone="America/New_York")
    # then its week is the one that began on Monday 26 October, 168 h plus the hour given back
    # on 1 November
    assert (week.first_day, week.last_day) == (date(2026, 10, 26), date(2026, 11, 1))
    assert week.end - week.start == timedelta(hours=169)
    february = period_containing(utc(2028, 2, 10), frequency="monthly", timezone="UTC")
    assert february.last_day == date(2028, 2, 29)
    december = period_containing(utc(2026, 12, 31, 23), frequency="monthly", timezone="UTC")
    assert december.end == utc(2027, 1, 1)


def test_the_periods_that_ended_in_a_window_are_listed_once_each_oldest_first():
    # given a window of 50 hours that ends at 01:00 UTC on 4 March
    ended = periods_ended(
        frequency="daily", timezone="UTC", after=utc(2026, 3, 1, 23), until=utc(2026, 3, 4, 1)
    )
    # then the days that ended in it are 2 and 3 March (1 March ended at 00:00 on the 2nd,
    # inside the window too)
    assert [period.first_day for period in ended] == [
        date(2026, 3, 1),
        date(2026, 3, 2),
        date(2026, 3, 3),
    ]
    # and a window that holds no period's end holds none
    assert (
        periods_ended(
            frequency="monthly", timezone="UTC", after=utc(2026, 3, 2), until=utc(2026, 3, 20)
        )
        == []
    )


def test_a_period_and_the_ones_around_it_touch_without_gap_or_overlap():
    period = period_containing(utc(2026, 3, 29, 12), frequency="daily", timezone="Europe/Paris")
    assert period.before().end == period.start
    assert period.after().start == period.end
    assert period.after().before() == period


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "../../../etc/passwd",
        "/etc/localtime",
        "",
        "UTC+3",
        "posixrules",
        "localtime",
        "Factory",
    ],
)
def test_only_iana_timezone_names_are_accepted(name):
    with pytest.raises(UnknownTimezone):
        timezone_checked(name)


def test_iana_names_are_accepted():
    assert timezone_checked("Asia/Kathmandu") == "Asia/Kathmandu"


@pytest.mark.parametrize(
    ("timezone", "day"),
    [
        ("America/Santiago", date(2024, 9, 7)),  # the next midnight does not happen: 00:00 -> 01:00
        ("America/Havana", date(2024, 3, 9)),
        ("Asia/Beirut", date(2024, 3, 30)),
        ("Atlantic/Azores", date(2024, 3, 30)),
        ("America/Santiago", date(2024, 9, 8)),  # the day that starts at 01:00
        ("Atlantic/Azores", date(2024, 10, 27)),  # midnight happens twice
    ],
)
def test_a_day_whose_next_midnight_is_skipped_or_doubled_ends_on_itself(timezone, day):
    # given noon of a day next to a daylight-saving change made at midnight
    noon = datetime.combine(day, datetime.min.time().replace(hour=12), tzinfo=ZoneInfo(timezone))
    # when its daily period is asked for
    period = period_containing(noon, frequency="daily", timezone=timezone)
    # then it is that day alone, first to last, and the next one starts where it ends
    assert period.first_day == period.last_day == day
    assert period.after().first_day == day + timedelta(days=1)
    assert period.after().start == period.end
