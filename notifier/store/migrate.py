"""Run the Alembic migrations from Python (CLI, tests, demo)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str | None = None) -> Config:
    """Return an Alembic config for this project, pointed at `url` when given."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["configure_logger"] = False
    if url:
        cfg.attributes["url"] = url
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at `url` (default: configured) up to `revision`."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database at `url` down to `revision`."""
    command.downgrade(alembic_config(url), revision)


def upgrade_every_shard(revision: str = "head") -> None:
    """Migrate every shard (NOTIFIER_DATABASE_URLS, else the one database) up to `revision`, in shard order."""
    from notifier.store.db import database_urls

    for url in database_urls():
        upgrade(url, revision)


def downgrade_every_shard(revision: str = "base") -> None:
    """Migrate every shard down to `revision`."""
    from notifier.store.db import database_urls

    for url in database_urls():
        downgrade(url, revision)
