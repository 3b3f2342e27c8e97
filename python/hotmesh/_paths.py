"""Where the SQL engine's files are.

A wheel carries the repository's top-level ``sql/`` and ``migrations/`` folders as
``hotmesh/sql`` and ``hotmesh/migrations`` (next to this module). An editable install, or
running from the checkout, has no such copies: there the repository's own folders are used,
two levels above this file (``python/hotmesh/_paths.py``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["migrations_dir", "sql_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent.parent


def _locate(name: str) -> Path:
    packaged = _PACKAGE_DIR / name
    if packaged.is_dir():
        return packaged
    in_checkout = _REPO_ROOT / name
    if in_checkout.is_dir():
        return in_checkout
    raise FileNotFoundError(
        f"hotmesh: the {name}/ folder is missing (looked in {packaged} and {in_checkout})"
    )


def sql_dir() -> Path:
    """The folder holding the engine's SQL files (packaged copy first, then the checkout)."""
    return _locate("sql")


def migrations_dir() -> Path:
    """The folder holding the schema migrations (packaged copy first, then the checkout)."""
    return _locate("migrations")
