#!/usr/bin/env python3
"""Fail if a tracked file names a path outside the repository.

A clone of this repository has nothing beside it, so nothing in it may read,
link or cite files from the directory it happened to be developed in. For
every text file that `git ls-files` lists this flags:

* absolute paths under the development machine's work directory;
* the reference directories that lived beside the repository (the
  fixtures, spec and design folders of the "shared" directory), by any
  spelling;
* relative paths starting with `../` that, resolved against the directory of
  the file that names them, leave the repository root.

Relative paths that stay inside the repository (bindings/rust/Cargo.toml's
path to core/, two levels up and back down) are fine, as are words that
merely contain "shared" (`wasm-bindgen-shared`). Binary files are skipped.

Usage: python3 tests/no_outside_paths.py [repo root]   (default: this file's repo)
"""

import os
import re
import subprocess
import sys

# Spelled in pieces so that this file does not flag itself.
SHARED = "sha" + "red"
WORK = "/wo" + "rk/"

PATTERNS = [
    # The work directory as an absolute path (not the tail of a URL or a longer word).
    (re.compile(r"(?<![\w.~/-])" + re.escape(WORK)), "absolute path under " + WORK),
    # SHARED followed by /fixtures, /spec or /design, however it is reached.
    (
        re.compile(r"(?<![\w-])" + SHARED + r"/(?:fixtures|spec|design)\b"),
        "reference directory outside the repository",
    ),
    # SHARED one or more levels up, whatever follows.
    (
        re.compile(r"\.\./" + SHARED + r"(?![\w-])"),
        "reference directory outside the repository",
    ),
]

# A relative path that starts by going up one or more levels.
RELATIVE = re.compile(r"(?<![\w.~/-])((?:\.\./)+)([\w.\-/]*)")


def tracked_files(root):
    out = subprocess.run(
        ["git", "-C", root, "ls-files", "-z"],
        check=True,
        capture_output=True,
    ).stdout
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def check_file(root, rel):
    path = os.path.join(root, rel)
    if not os.path.isfile(path) or os.path.islink(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return []  # binary
    text = data.decode("utf-8", "replace")
    problems = []
    file_dir = os.path.dirname(rel)
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, why in PATTERNS:
            m = pattern.search(line)
            if m:
                problems.append((rel, lineno, why, line.strip()))
                break
        else:
            for m in RELATIVE.finditer(line):
                target = os.path.normpath(os.path.join(file_dir, m.group(1) + m.group(2)))
                if target == ".." or target.startswith("../"):
                    problems.append(
                        (rel, lineno, "relative path %r leaves the repository" % (m.group(0),), line.strip())
                    )
                    break
    return problems


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    root = subprocess.run(
        ["git", "-C", root, "rev-parse", "--show-toplevel"], check=True, capture_output=True, text=True
    ).stdout.strip()
    problems = []
    files = tracked_files(root)
    for rel in files:
        problems.extend(check_file(root, rel))
    for rel, lineno, why, line in problems:
        if len(line) > 160:
            line = line[:157] + "..."
        print("%s:%d: %s: %s" % (rel, lineno, why, line))
    if problems:
        print(
            "path-check: %d line(s) in tracked files name paths outside the repository "
            "(a clone has nothing beside it)" % len(problems),
            file=sys.stderr,
        )
        return 1
    print("path-check: %d tracked files, no path outside the repository" % len(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
