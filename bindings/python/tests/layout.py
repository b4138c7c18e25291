"""The CRR layout the binding suites run on, as the harness does (DECISIONS
D42): ``$CRSQL_TEST_LAYOUT`` is ``crsqlite`` (the default) or ``compact``
(``make py-binding-test-compact``). Every database the suites create through
:func:`connect` gets it as its ``crr-layout`` setting, so their
``crsql_as_crr`` calls create that layout."""

from __future__ import annotations

import os
import sqlite3

import crsql_stream

LAYOUT = os.environ.get("CRSQL_TEST_LAYOUT") or "crsqlite"
if LAYOUT not in ("crsqlite", "compact"):
    raise SystemExit(f"CRSQL_TEST_LAYOUT must be 'crsqlite' or 'compact', got {LAYOUT!r}")


def connect(*args, **kwargs) -> sqlite3.Connection:
    """``crsql_stream.connect``, then the suites' layout (nothing is written
    for the default, or when the database already has the setting)."""
    conn = crsql_stream.connect(*args, **kwargs)
    if LAYOUT != "crsqlite":
        (current,) = conn.execute("SELECT crsql_config_get('crr-layout')").fetchone()
        if current != LAYOUT:
            conn.execute("SELECT crsql_config_set('crr-layout', ?)", (LAYOUT,))
    return conn
