#!/usr/bin/env python3
"""The three hub examples (examples/{python,rust,node}/hub_sync.*) against
one real hub: `make hub-examples-test` runs this after the bindings' tests.

It starts dist/crsql-sync on 127.0.0.1 (free port, temporary data and schema
directories, an auth file with one token), then runs each example as a user
would, each on its own database with a row of its own, twice round, and
checks that every example printed all three rows in the end. A wrong token
must make an example exit with 2 (the hub's `unauthorized`, a typed error in
each binding).

Environment: PYTHON (a Python with the wheel and websockets, default
target/py-test-venv/bin/python), NODE_PATH (node_modules with crsql-stream,
ws and better-sqlite3, default target/node-test/node_modules), RUST_EXAMPLE
(the built example, default harness/target/release/examples/hub_sync).
"""

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "dist", "crsql-sync")
PYTHON = os.environ.get("PYTHON") or os.path.join(ROOT, "target", "py-test-venv", "bin", "python")
NODE_PATH = os.environ.get("NODE_PATH") or os.path.join(ROOT, "target", "node-test", "node_modules")
RUST = os.environ.get("RUST_EXAMPLE") or os.path.join(ROOT, "harness", "target", "release", "examples", "hub_sync")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);\n"
    "SELECT crsql_as_crr('todos');\n"
)
TOKEN = "s3cret"


def command(lang, db, url, token, insert):
    args = ["--db", db, "--url", url, "--token", token] + (["--insert", insert] if insert else [])
    if lang == "python":
        return [PYTHON, os.path.join(ROOT, "examples", "python", "hub_sync.py")] + args
    if lang == "node":
        return ["node", os.path.join(ROOT, "examples", "node", "hub_sync.js")] + args
    return [RUST] + args


def run(lang, db, url, token=TOKEN, insert=None):
    env = dict(os.environ, NODE_PATH=NODE_PATH)
    env.pop("CRSQL_STREAM_EXT", None)  # the packaged library (Rust finds dist/)
    p = subprocess.run(command(lang, db, url, token, insert), capture_output=True, text=True, timeout=60, env=env)
    return p.returncode, p.stdout, p.stderr


def main():
    for path in (BIN, PYTHON, RUST, NODE_PATH):
        if not os.path.exists(path):
            sys.exit(f"hub_examples: {path} is missing (make hub py-binding-test node-binding-test rust-binding-test)")
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "schema"))
        with open(os.path.join(d, "schema", "acme.sql"), "w") as f:
            f.write(SCHEMA)
        digest = subprocess.run([BIN, "hash-token", TOKEN], check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(d, "auth.toml"), "w") as f:
            f.write(f'[tenants.acme]\ntokens = [{{ sha256 = "{digest}" }}]\n')
        log = open(os.path.join(d, "hub.log"), "w")
        hub = subprocess.Popen(
            [BIN, "serve", "--data", os.path.join(d, "data"), "--schema-dir", os.path.join(d, "schema"),
             "--auth", os.path.join(d, "auth.toml"), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        try:
            line = hub.stdout.readline()
            if not line.startswith("listening on ws://"):
                sys.exit(f"hub_examples: the hub did not start: {line!r}")
            url = "ws://" + line.strip().split("ws://", 1)[1] + "/acme"
            langs = ["rust", "python", "node"]
            expected = "".join(sorted(f"{lang[0]}1\tfrom {lang}\n" for lang in langs))
            outputs = {}
            for round_ in (1, 2):
                for lang in langs:
                    insert = f"{lang[0]}1=from {lang}" if round_ == 1 else None
                    code, out, err = run(lang, os.path.join(d, f"{lang}.db"), url, insert=insert)
                    if code != 0:
                        sys.exit(f"hub_examples: the {lang} example failed ({code}):\n{out}{err}")
                    outputs[lang] = out
            for lang in langs:
                if outputs[lang] != expected:
                    sys.exit(f"hub_examples: the {lang} example ended with\n{outputs[lang]}expected\n{expected}")
                code, out, err = run(lang, os.path.join(d, f"{lang}.db"), url, token="wrong")
                if code != 2 or "unauthorized" not in err:
                    sys.exit(f"hub_examples: {lang} with a wrong token: exit {code}, expected 2 and unauthorized:\n{err}")
            print("hub_examples: rust, python and node synced through one hub; a wrong token exits 2 in each")
        finally:
            hub.kill()
            hub.wait()
            log.close()


if __name__ == "__main__":
    main()
