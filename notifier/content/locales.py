"""Locale tags: parse and normalize them (Babel), and the fallback chain from a wanted one."""
from __future__ import annotations

from functools import lru_cache

from babel import Locale, UnknownLocaleError

MAX_TAG_CHARS = 35  # RFC 5646 §4.4.1: 35 characters hold every tag an application needs


class LocaleError(ValueError):
    """A locale tag Babel cannot parse or does not know."""


@lru_cache(maxsize=1024)
def normalize(tag: str) -> str:
    """The BCP 47 form of a locale tag ('nb_no' -> 'nb-NO'); raises LocaleError naming the problem.

    Babel's Locale.parse is the judge (CLDR's languages, scripts and territories), so a tag is
    accepted only if numbers, dates and plurals can be formatted for it."""
    if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_CHARS or not tag.isascii():
        raise LocaleError(f"a locale is a BCP 47 tag of at most {MAX_TAG_CHARS} ASCII characters, e.g. nb-NO")
    try:
        parsed = Locale.parse(tag.replace("-", "_"))
    except UnknownLocaleError:
        raise LocaleError(f"unknown locale {tag!r} (not in CLDR); e.g. en, nb-NO, de-CH") from None
    except (ValueError, TypeError):
        raise LocaleError(f"{tag!r} is not a locale tag; e.g. en, nb-NO, zh-Hant-TW") from None
    return str(parsed).replace("_", "-")


@lru_cache(maxsize=1024)
def babel_locale(tag: str) -> Locale:
    """The Babel Locale of a normalized tag."""
    return Locale.parse(tag.replace("-", "_"))


def fallback_chain(wanted: str | None, default: str) -> tuple[str, ...]:
    """The tags to try in order: the wanted one, then it with its last subtag dropped, …, then the default.

    'nb-NO' -> ('nb-NO', 'nb', 'en'); 'zh-Hant-TW' -> ('zh-Hant-TW', 'zh-Hant', 'zh', 'en'); None -> ('en',)."""
    chain: list[str] = []
    if wanted:
        parts = normalize(wanted).split("-")
        chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if default not in chain:
        chain.append(default)
    return tuple(chain)
