"""Render a digest's text from its members: one function, render_digest, behind which the engine sits.

Templates are files, `<category>.<channel>.j2` in the digest template directory (reviewable in
git; NOTIFIER_DIGEST_TEMPLATE_DIR, unset = templates/digests in the repository), each with a
`title` and a `body` block. An email digest may add `<category>.email.html.j2` (an `html`
block), which is autoescaped. A category and channel without a file get the built-in default.

Rendering runs in Jinja2's SandboxedEnvironment: a template sees only the context below (no
attribute of Python internals, no callable of ours), so a template file is data, not code.

Context: `members` (oldest first; each a mapping with notification_id, type, title, body,
params — the event's data — and created_at), `count`, `category`, `channel`, `locale`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from jinja2 import ChainableUndefined, FileSystemLoader, TemplateNotFound, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from notifier.settings import get_settings

log = logging.getLogger(__name__)

REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "digests"

# The default for any category and channel without a file of its own.
BUILT_IN = """\
{%- block title -%}{{ count }} new {{ category }} notifications{%- endblock -%}
{%- block body -%}
{{ members[-3:] | reverse | map(attribute="title") | join("\\n") }}
{%- if count > 3 %}{{ "\\n" }}…and {{ count - 3 }} more{% endif -%}
{%- endblock -%}
"""

# The limits of the event fields a digest becomes (notifier.intake.validation Title and Body).
TITLE_MAX, BODY_MAX = 256, 16_384
_NOT_SINGLE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
_NOT_BODY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """A digest's text, fit for a delivery row; `template` says which one made it, `note` why not the file."""

    title: str
    body: str
    html: str | None
    template: str
    note: str | None = None


def template_dir() -> Path:
    return get_settings().digest_template_dir or REPO_TEMPLATES


@lru_cache(maxsize=4)
def _environment(directory: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(directory)),
        # HTML templates escape every value; text templates (push, SMS, plain email) must not.
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
        # Members' params differ from event to event: a missing one renders empty, never an error.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_digest(category: str, channel: str, members: Sequence[Mapping[str, Any]],
                  locale: str | None = None, *, directory: Path | None = None) -> RenderedDigest:
    """Render a digest of `members` for one category and channel (file template, else the built-in)."""
    env = _environment(directory or template_dir())
    context = {"members": list(members), "count": len(members), "category": category, "channel": channel,
               "locale": locale}
    name, note = f"{category}.{channel}.j2", None
    try:
        title, body = _blocks(env, env.get_template(name), context, "title", "body")
    except TemplateNotFound:
        name = "built-in"
        title, body = _blocks(env, env.from_string(BUILT_IN), context, "title", "body")
    except Exception as exc:  # noqa: BLE001 - a broken template must not hold the members' digest back
        log.error("digest template %s failed (%s: %s); the built-in default is used", name, type(exc).__name__, exc)
        note = f"template {name} failed ({type(exc).__name__}); the built-in default was used"
        name = "built-in"
        title, body = _blocks(env, env.from_string(BUILT_IN), context, "title", "body")
    html = None
    if channel == "email":
        try:
            [html] = _blocks(env, env.get_template(f"{category}.email.html.j2"), context, "html")
        except TemplateNotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - the text part still goes
            log.error("digest template %s.email.html.j2 failed (%s: %s); sent as text only", category,
                      type(exc).__name__, exc)
    title = _single_line(title)[:TITLE_MAX] or f"{len(members)} new notifications"
    body = _NOT_BODY.sub("", body).strip()[:BODY_MAX] or title
    return RenderedDigest(title, body, html, name, note)


def _blocks(env: SandboxedEnvironment, template, context: dict, *names: str) -> list[str]:
    """Render named blocks of one template with one context."""
    out = []
    for name in names:
        block = template.blocks.get(name)
        out.append(env.concat(block(template.new_context(context))) if block else "")  # type: ignore[attr-defined]
    return out


def _single_line(text: str) -> str:
    return " ".join(_NOT_SINGLE_LINE.sub(" ", text).split())
