"""Templates per notification type and channel, with locale variants, rendered safely.

Layout: ``<NOTIFIER_TEMPLATES_DIR>/<type>/<channel>.<locale>.toml``, one file per variant, e.g.
``templates/order_shipped/push.nb.toml``. Each file holds the channel's fields:

- push: ``title``, ``body``
- email: ``subject``, ``text``, and ``html`` (optional)
- sms: ``text``

Every (type, channel) needs a variant in the default locale (NOTIFIER_TEMPLATES_DEFAULT_LOCALE),
the end of every fallback chain. Templates are files, not a table: they are reviewed in git with
the code whose events they render, deployed with it, and read once per process (no query at
intake); a translator adds ``push.de.toml`` without touching the others.

Safety: Jinja2's SandboxedEnvironment (no attribute starting with "_", no unsafe method), no
globals (a template sees its params and nothing else), StrictUndefined (a missing value is an
error, never an empty string), and autoescape in ``html`` only. Params are values, never compiled:
"{{ ''.__class__ }}" sent as a param is text. The params a template needs are the variables it
names (jinja2.meta.find_undeclared_variables), over every locale of the channel, so an event is
refused at intake when it lacks one in any language.
"""
from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
from jinja2 import StrictUndefined, meta
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from notifier.content import formatting, locales
from notifier.content.formatting import FormatError
from notifier.settings import get_settings

log = logging.getLogger(__name__)

# The fields of each channel's variant: (required, optional). html is the one field autoescaped.
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "push": (("title", "body"), ()),
    "email": (("subject", "text"), ("html",)),
    "sms": (("text",), ()),
}
HTML_FIELDS = frozenset({"html"})
VARIANT_FILE = re.compile(r"(?P<channel>[a-z]+)\.(?P<locale>[A-Za-z0-9_-]+)\.toml")
TYPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TemplateError(ValueError):
    """An event's template cannot be used: unknown, no variant for a channel, params missing, render failed."""


def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False)
    env.globals.clear()  # range, dict, lipsum, cycler, joiner, namespace: a template sees its params only
    env.filters.update(formatting.FILTERS)
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@dataclass(frozen=True, slots=True)
class Variant:
    """One file: a type's fields on one channel in one locale, compiled."""

    type: str
    channel: str
    locale: str
    path: Path
    sources: Mapping[str, str]
    compiled: Mapping[str, jinja2.Template]
    params: frozenset[str]


@dataclass(frozen=True, slots=True)
class Rendered:
    """A type rendered for one channel in one locale."""

    type: str
    channel: str
    locale_used: str
    locale_requested: str | None
    fallback_chain: tuple[str, ...]
    fields: Mapping[str, str]

    # The channel's fields by name; a field the channel does not have is None.
    title = property(lambda self: self.fields.get("title"))
    body = property(lambda self: self.fields.get("body"))
    subject = property(lambda self: self.fields.get("subject"))
    text = property(lambda self: self.fields.get("text"))
    html = property(lambda self: self.fields.get("html"))

    def content(self) -> dict[str, str]:
        """The delivery's title, body (and html) as providers read them: email's subject is its title,
        its text the body; an SMS is its text alone."""
        f = self.fields
        if self.channel == "push":
            return {"title": f["title"], "body": f["body"]}
        if self.channel == "email":
            return {"title": f["subject"], "body": f["text"]} | ({"html": f["html"]} if f.get("html") else {})
        return {"title": "", "body": f["text"]}

    def record(self) -> dict[str, Any]:
        """What the delivery row keeps about the rendering (payload["template"])."""
        return {"name": self.type, "locale": self.locale_used, "locale_requested": self.locale_requested,
                "fallback_chain": list(self.fallback_chain)}


@dataclass(slots=True)
class Catalog:
    """Every template of a directory: variants by (type, channel, locale), and the files that are broken."""

    directory: Path
    default_locale: str
    variants: dict[tuple[str, str], dict[str, Variant]] = field(default_factory=dict)
    broken: dict[str, list[str]] = field(default_factory=dict)  # type -> problems
    _required: dict[tuple[str, frozenset[str] | None], frozenset[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: Path, default_locale: str = "en") -> Catalog:
        """Read and compile every variant under `directory`; problems are kept per type, not raised."""
        catalog = cls(Path(directory), locales.normalize(default_locale))
        if not catalog.directory.is_dir():
            log.info("templates: no directory %s; no templates", catalog.directory)
            return catalog
        for type_dir in sorted(p for p in catalog.directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not TYPE_NAME.fullmatch(type_dir.name):
                log.warning("templates: %s is not a type name; skipped", type_dir)
                continue
            for path in sorted(type_dir.glob("*.toml")):
                try:
                    variant = _read_variant(type_dir.name, path)
                except TemplateError as exc:
                    catalog.broken.setdefault(type_dir.name, []).append(f"{path.name}: {exc}")
                    continue
                catalog.variants.setdefault((variant.type, variant.channel), {})[variant.locale] = variant
        for (type_, channel), by_locale in catalog.variants.items():
            if catalog.default_locale not in by_locale:
                catalog.broken.setdefault(type_, []).append(
                    f"{channel}: no variant in the default locale {catalog.default_locale} "
                    f"({channel}.{catalog.default_locale}.toml), the end of every fallback chain")
        for type_, problems in catalog.broken.items():
            log.error("templates: %s is broken: %s", type_, "; ".join(problems))
        return catalog

    def types(self) -> list[str]:
        return sorted({t for t, _ in self.variants} | set(self.broken))

    def channels(self, type_: str) -> list[str]:
        return sorted(c for t, c in self.variants if t == type_)

    def locales(self, type_: str, channel: str) -> list[str]:
        return sorted(self.variants.get((type_, channel), {}))

    def required_params(self, type_: str, channels: Iterable[str] | None = None) -> frozenset[str]:
        """The params every variant of `type_` on `channels` (all when None) names."""
        wanted = frozenset(channels) if channels is not None else None
        key = (type_, wanted)
        if key not in self._required:  # asked for every templated event: computed once per process
            self._required[key] = frozenset().union(*(
                v.params for (t, c), by_locale in self.variants.items()
                if t == type_ and (wanted is None or c in wanted) for v in by_locale.values()
            ))
        return self._required[key]

    def check(self, type_: str, channels: Iterable[str], params: Mapping[str, Any]) -> None:
        """Raise TemplateError unless `type_` has a variant for every channel and `params` has all it needs."""
        channels = list(channels)
        self.check_variants(type_, channels)
        missing = sorted(self.required_params(type_, channels) - set(params))
        if missing:
            raise TemplateError(f"params missing: {', '.join(missing)} (template {type_!r} needs them)")

    def check_variants(self, type_: str, channels: Iterable[str]) -> None:
        """Raise TemplateError unless `type_` exists, is not broken, and has a variant for every channel."""
        if type_ in self.broken:
            raise TemplateError(f"template {type_!r} is broken on this server: {'; '.join(self.broken[type_])}")
        if not self.channels(type_):
            raise TemplateError(f"no template {type_!r} (known: {', '.join(self.types()) or 'none'})")
        lacking = [c for c in channels if (type_, c) not in self.variants]
        if lacking:
            raise TemplateError(f"template {type_!r} has no variant for channel {', '.join(lacking)} "
                                f"(it has {', '.join(self.channels(type_))})")

    def render(self, type_: str, channel: str, params: Mapping[str, Any], locale: str | None = None,
               *, timezone: str | None = None) -> Rendered:
        """Render `type_` for `channel` in the first locale of the fallback chain that has a variant.

        Numbers, dates and plurals follow the variant's locale (its words and its formats agree);
        times are shown in `timezone` (an IANA name; UTC when None). Raises TemplateError."""
        self.check(type_, [channel], params)
        try:
            chain = locales.fallback_chain(locale, self.default_locale)
        except locales.LocaleError as exc:
            raise TemplateError(f"locale: {exc}") from None
        by_locale = self.variants[(type_, channel)]
        used = next(tag for tag in chain if tag in by_locale)  # the default is always there (load)
        variant = by_locale[used]
        fields: dict[str, str] = {}
        with formatting.formatting_for(locales.babel_locale(used), timezone):
            for name, template in variant.compiled.items():
                try:
                    fields[name] = template.render(params).strip()
                except SecurityError as exc:
                    raise TemplateError(f"template {type_!r} ({channel}, {used}) {name}: refused by the sandbox: "
                                        f"{exc}") from None
                except jinja2.UndefinedError as exc:
                    raise TemplateError(f"template {type_!r} ({channel}, {used}) {name}: {exc}") from None
                except (FormatError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
                    raise TemplateError(f"template {type_!r} ({channel}, {used}) {name}: cannot render: "
                                        f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return Rendered(type_, channel, used, locale, chain[: chain.index(used) + 1], fields)


def _read_variant(type_: str, path: Path) -> Variant:
    match = VARIANT_FILE.fullmatch(path.name)
    if not match or match["channel"] not in FIELDS:
        raise TemplateError(f"name it <channel>.<locale>.toml with channel one of {', '.join(FIELDS)}")
    channel = match["channel"]
    try:
        locale = locales.normalize(match["locale"])
    except locales.LocaleError as exc:
        raise TemplateError(str(exc)) from None
    try:
        sources = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TemplateError(f"not TOML: {exc}") from None
    required, optional = FIELDS[channel]
    missing = [f for f in required if f not in sources]
    unknown = sorted(set(sources) - set(required) - set(optional))
    if missing or unknown:
        raise TemplateError(f"{channel} takes {', '.join(required + optional)}"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    compiled, params = {}, set()
    for name, source in sources.items():
        if not isinstance(source, str):
            raise TemplateError(f"{name} must be a string")
        env = _HTML_ENV if name in HTML_FIELDS else _TEXT_ENV
        try:
            ast = env.parse(source)
            compiled[name] = env.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{name}: line {exc.lineno}: {exc.message}") from None
        params |= meta.find_undeclared_variables(ast)
    return Variant(type_, channel, locale, path, sources, compiled, frozenset(params))


@lru_cache(maxsize=4)
def _catalog(directory: str, default_locale: str) -> Catalog:
    return Catalog.load(Path(directory), default_locale)


def catalog() -> Catalog:
    """The catalog of NOTIFIER_TEMPLATES_DIR, read once per process (templates change with a deploy)."""
    s = get_settings()
    return _catalog(str(Path(s.templates_dir).resolve()), s.templates_default_locale)


def render(type_: str, channel: str, params: Mapping[str, Any], locale: str | None = None,
           *, timezone: str | None = None) -> Rendered:
    """Render a template of NOTIFIER_TEMPLATES_DIR (Catalog.render)."""
    return catalog().render(type_, channel, params, locale, timezone=timezone)


def required_params(type_: str, channels: Iterable[str] | None = None) -> frozenset[str]:
    """The params a template of NOTIFIER_TEMPLATES_DIR needs (Catalog.required_params)."""
    return catalog().required_params(type_, channels)
