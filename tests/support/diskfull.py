"""A real "database or disk is full" (SQLITE_FULL) on one SQLite connection, without filling a
disk: `PRAGMA max_page_count` caps the file at its current size, so the next write that needs a
page fails exactly as on a full disk (SQLite rolls the transaction back by itself, even on COMMIT)."""

from __future__ import annotations

import sqlite3

UNLIMITED_PAGES = 1 << 30


def fill(db: sqlite3.Connection) -> None:
    """Writes through `db` that need a new page fail from now on."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def free(db: sqlite3.Connection) -> None:
    """Space returns."""
    db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
