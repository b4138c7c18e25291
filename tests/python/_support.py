"""What the Python test modules share: where the built extension is, and
whether this Python can load it."""

import os
import sqlite3
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.path.abspath(
    os.environ.get("CRSQL_STREAM_EXT")
    or os.path.join(HERE, "..", "..", "dist", "libcrsql_stream.so")
)
# Some builds (pyenv's, for one) leave out extension loading: skip there,
# loudly. A missing extension file is a failure, not a skip.
SKIP = not hasattr(sqlite3.Connection, "enable_load_extension")
SKIP_REASON = f"{sys.executable}'s sqlite3 cannot load extensions; use /usr/bin/python3"
