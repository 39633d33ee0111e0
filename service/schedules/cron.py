"""Cron expressions -> APScheduler 3 triggers.

Five fields are standard crontab (minute hour day month weekday); six put seconds first (an
extension, for tests and sub-minute schedules). Weekday numbers follow crontab (0 or 7 = Sunday):
APScheduler 3 counts 0 as Monday, so numeric weekdays are translated, or "0 2 * * 1-5" would
run Tuesday to Saturday.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
APS_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler's weekday 0..6
FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")
# Searched backwards for the latest fire time at or before a moment (nightly schedules need a day or so).
LOOKBACK = timedelta(days=8)
WINDOWS = (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), LOOKBACK)
MAX_STEPS = 10_000


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says what is wrong."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')") from None


def _weekday(token: str) -> int:
    t = token.strip().lower()
    if t in DAY_NAMES:
        return DAY_NAMES.index(t)
    if t.isdigit() and 0 <= int(t) <= 7:
        return int(t) % 7
    raise CronError(f"weekday {token!r}: use 0-7 (0 and 7 are Sunday) or sun..sat")


def weekdays(field: str) -> str:
    """A crontab weekday field as an APScheduler weekday list ("*" stays "*")."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"weekday step {step_text!r}: a positive number")
            step = int(step_text)
        if body == "*":
            lo, hi = 0, 6
        elif "-" in body:
            first, last = body.split("-", 1)
            lo, hi = _weekday(first), _weekday(last)
            if last.strip() == "7":
                hi = 7
            if hi < lo:
                raise CronError(f"weekday range {body!r} runs backwards")
        else:
            lo = _weekday(body)
            hi = 6 if step_text else lo
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(APS_NAMES[(d + 6) % 7] for d in sorted(days))


def trigger(cron: str, timezone: str) -> CronTrigger:
    """The trigger for `cron` in `timezone`; CronError naming the problem otherwise."""
    tz = zone(timezone)
    parts = cron.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise CronError(f"{cron!r}: expected 5 fields (minute hour day month weekday) or 6 (seconds first), "
                        f"got {len(parts)}")
    values = dict(zip(FIELDS, parts, strict=True))
    values["day_of_week"] = weekdays(values["day_of_week"])
    try:
        return CronTrigger(timezone=tz, **values)
    except ValueError as exc:
        raise CronError(f"{cron!r}: {exc}") from None


def next_fire(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first fire time strictly after `after`."""
    t = trigger(cron, timezone)
    return t.get_next_fire_time(None, after + timedelta(microseconds=1))


def latest_fire(cron: str, timezone: str, at: datetime) -> datetime | None:
    """The latest fire time at or before `at` (within LOOKBACK): the time a late-running fire belongs to.
    Windows widen from a minute to LOOKBACK, so a per-second cron and a nightly one both take few steps."""
    t = trigger(cron, timezone)
    for window in WINDOWS:
        latest, cursor = None, at - window
        while (fire := t.get_next_fire_time(latest, cursor)) is not None and fire <= at:
            latest, cursor = fire, fire + timedelta(microseconds=1)
        if latest is not None:
            return latest
    return None


def fires_between(cron: str, timezone: str, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """Fire times in (start, end), the latest `limit` of them (the search stops after MAX_STEPS fires)."""
    t = trigger(cron, timezone)
    found: list[datetime] = []
    cursor, previous = max(start, end - LOOKBACK) + timedelta(microseconds=1), None
    for _ in range(MAX_STEPS):
        fire = t.get_next_fire_time(previous, cursor)
        if fire is None or fire >= end:
            break
        found = [*found[-(limit - 1):], fire] if limit > 1 else [fire]
        previous, cursor = fire, fire + timedelta(microseconds=1)
    return found
