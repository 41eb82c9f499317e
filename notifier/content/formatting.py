"""The filters templates format with: numbers, money, dates, lists and plurals per locale (Babel).

The locale (the variant's) and the timezone (the user's) of the render in progress are
context variables set by `formatting_for`, so the two template environments are built and
their templates compiled once, not once per locale or timezone.
"""
from __future__ import annotations

import contextlib
import contextvars
import zoneinfo
from datetime import date, datetime, time, timezone, tzinfo
from decimal import Decimal
from typing import Any, Iterator

from babel import dates, lists, numbers
from babel import Locale

_LOCALE: contextvars.ContextVar[Locale] = contextvars.ContextVar("template_locale")
_TZ: contextvars.ContextVar[tzinfo] = contextvars.ContextVar("template_timezone", default=timezone.utc)

PLURAL_CATEGORIES = ("zero", "one", "two", "few", "many", "other")  # CLDR's


class FormatError(ValueError):
    """A filter given a value it cannot format (a word where a number belongs)."""


@contextlib.contextmanager
def formatting_for(locale: Locale, tz_name: str | None) -> Iterator[None]:
    """Format in `locale` and show times in `tz_name` (UTC when None) inside the block."""
    tz: tzinfo = timezone.utc
    if tz_name:
        try:
            tz = zoneinfo.ZoneInfo(tz_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            tz = timezone.utc
    tokens = (_LOCALE.set(locale), _TZ.set(tz))
    try:
        yield
    finally:
        _LOCALE.reset(tokens[0])
        _TZ.reset(tokens[1])


def _number(value: Any, what: str) -> int | float | Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise FormatError(f"{what} needs a number, not {type(value).__name__}")
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            raise FormatError(f"{what} needs a number, not the text {value[:20]!r}") from None
    return value


def number(value: Any, format: str | None = None) -> str:
    """1234.5 -> '1,234.5' (en), '1 234,5' (nb), '1.234,5' (de)."""
    return numbers.format_decimal(_number(value, "number"), format=format, locale=_LOCALE.get())


def percent(value: Any, format: str | None = None) -> str:
    """0.25 -> '25%' (en), '25 %' (nb, de)."""
    return numbers.format_percent(_number(value, "percent"), format=format, locale=_LOCALE.get())


def currency(value: Any, code: str) -> str:
    """(12.5, 'EUR') -> '€12.50' (en), '12,50 €' (de)."""
    return numbers.format_currency(_number(value, "currency"), str(code), locale=_LOCALE.get())


def _instant(value: Any, what: str) -> datetime | date | time:
    if isinstance(value, (datetime, date, time)):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value) if ("T" in value or " " in value) else date.fromisoformat(value)
        except ValueError:
            pass
    raise FormatError(f"{what} needs an ISO 8601 date or date-time, e.g. 2026-12-01T09:00:00Z")


def _aware(value: datetime) -> datetime:
    # A time without an offset is taken as UTC: params come from JSON, which has no other convention.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def format_date(value: Any, format: str = "medium") -> str:
    """'2026-12-24' -> 'Dec 24, 2026' (en), '24. des. 2026' (nb); a date-time shows its date in the user's zone."""
    instant = _instant(value, "date")
    if isinstance(instant, datetime):
        instant = _aware(instant).astimezone(_TZ.get()).date()
    return dates.format_date(instant, format=format, locale=_LOCALE.get())


def format_datetime(value: Any, format: str = "medium") -> str:
    """An instant shown in the user's timezone (UTC when unknown), in the locale's words."""
    instant = _instant(value, "datetime")
    if not isinstance(instant, datetime):
        raise FormatError("datetime needs a date-time, e.g. 2026-12-01T09:00:00Z")
    return dates.format_datetime(_aware(instant), format=format, tzinfo=_TZ.get(), locale=_LOCALE.get())


def format_time(value: Any, format: str = "short") -> str:
    """The time of day of an instant in the user's timezone: '14:30' (nb), '2:30 PM' (en)."""
    instant = _instant(value, "time")
    if not isinstance(instant, datetime):
        raise FormatError("time needs a date-time, e.g. 2026-12-01T09:00:00Z")
    return dates.format_time(_aware(instant), format=format, tzinfo=_TZ.get(), locale=_LOCALE.get())


def and_list(value: Any, style: str = "standard") -> str:
    """['Anna', 'Bo', 'Cai'] -> 'Anna, Bo, and Cai' (en), 'Anna, Bo og Cai' (nb)."""
    if not isinstance(value, (list, tuple)):
        raise FormatError(f"and_list needs a list, not {type(value).__name__}")
    return lists.format_list([str(v) for v in value], style=style, locale=_LOCALE.get())


def plural(value: Any, **forms: str) -> str:
    """The form of the CLDR plural category of `value` in the locale; '#' in it becomes the number.

    `{{ count | plural(one="# item", other="# items") }}`; a language with more categories (Polish:
    one, few, many) takes them as keywords, and `other` is the fallback every language has."""
    unknown = set(forms) - set(PLURAL_CATEGORIES)
    if unknown:
        raise FormatError(f"plural takes the CLDR categories {', '.join(PLURAL_CATEGORIES)}; not {', '.join(sorted(unknown))}")
    if "other" not in forms:
        raise FormatError("plural needs an `other` form")
    n = _number(value, "plural")
    locale = _LOCALE.get()
    form = forms.get(locale.plural_form(n), forms["other"])
    return str(form).replace("#", numbers.format_decimal(n, locale=locale))


FILTERS = {
    "number": number, "percent": percent, "currency": currency, "date": format_date,
    "datetime": format_datetime, "time": format_time, "and_list": and_list, "plural": plural,
}
