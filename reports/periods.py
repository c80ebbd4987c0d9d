"""Report periods: calendar days, ISO weeks (Monday to Monday) and months in a person's timezone.

A period runs from the person's local midnight to the next one, so a daily report of a day with
a daylight-saving change covers 23 or 25 hours, and a weekly one 167 or 169. Periods are stored
and compared as aware datetimes (UTC in the database); the timezone only decides where the
midnights fall.
"""

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DAILY, WEEKLY, MONTHLY = "daily", "weekly", "monthly"
FREQUENCIES = (DAILY, WEEKLY, MONTHLY)


class UnknownTimezone(ValueError):
    pass


@dataclass(frozen=True)
class Period:
    frequency: str
    timezone: str
    start: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        return self.start.astimezone(ZoneInfo(self.timezone)).date()

    @property
    def last_day(self) -> date:
        # The instant before the end, then its local date: a microsecond taken off the local
        # wall clock instead would land in the hour a forward change skips at midnight
        # (America/Santiago), still on the next day.
        return (self.end - timedelta(microseconds=1)).astimezone(ZoneInfo(self.timezone)).date()

    def after(self) -> "Period":
        return period_containing(self.end, frequency=self.frequency, timezone=self.timezone)

    def before(self) -> "Period":
        return period_containing(
            self.start - timedelta(microseconds=1), frequency=self.frequency, timezone=self.timezone
        )


def timezone_checked(name: str) -> str:
    """The IANA name if this machine's tz database knows it; UnknownTimezone otherwise. Only
    the database's names: not a path, not a POSIX TZ string, not a file someone placed."""
    if name not in timezone_names():
        raise UnknownTimezone(f"{name!r} is not an IANA timezone name, such as Europe/Paris.")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise UnknownTimezone(f"{name!r} is not an IANA timezone name.") from error
    return name


def period_containing(moment: datetime, *, frequency: str, timezone: str) -> Period:
    """The period of this frequency, in this timezone, that `moment` (aware) falls in."""
    zone = ZoneInfo(timezone)
    day = moment.astimezone(zone).date()
    if frequency == DAILY:
        first, following = day, day + timedelta(days=1)
    elif frequency == WEEKLY:
        first = day - timedelta(days=day.weekday())
        following = first + timedelta(days=7)
    elif frequency == MONTHLY:
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown frequency {frequency!r}")
    return Period(
        frequency=frequency,
        timezone=timezone,
        start=_midnight(first, zone),
        end=_midnight(following, zone),
    )


def periods_ended(*, frequency: str, timezone: str, after: datetime, until: datetime):
    """The periods whose end falls in (after, until], oldest first."""
    period = period_containing(until, frequency=frequency, timezone=timezone).before()
    ended = []
    while period.end > after:
        ended.append(period)
        period = period.before()
    return list(reversed(ended))


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # Where midnight does not exist (a clock moved forward at 00:00), fold=0 reads it with the
    # offset before the change: the first instant of that day. Where it happens twice, the first.
    # In UTC: Python compares and subtracts two datetimes of one tzinfo by their wall clocks,
    # which would make a day with a daylight-saving change 24 hours long.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


# In the tz database's listing but no place's time: `localtime` is the host's own zone (what it
# means differs from machine to machine), `Factory` a placeholder.
NOT_A_PLACE = frozenset({"localtime", "Factory"})


@functools.cache
def timezone_names() -> list[str]:
    """The tz database's IANA names, sorted; read once, since it does not change under a
    running process."""
    return sorted(available_timezones() - NOT_A_PLACE)
