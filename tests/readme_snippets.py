#!/usr/bin/env python3
"""Run the README's binding snippets as written, the way a user would.

`make readme-test` runs this after `make wheel` and `make node-package`. It
reads the "## Bindings" section of README.md (the snippets are parsed from it,
never copied here) and, for each language, sets up a scratch project in a new
temporary directory outside the repository:

* Python: a fresh venv of /usr/bin/python3 (`$PYTHON`), the wheel the README
  names (dist/crsql_stream-*.whl) installed with pip, the snippet run as a
  script;
* Rust: `cargo new`, the README's `[dependencies]` line with its path pointing
  at this repository's bindings/rust, the snippet as the body of
  `fn main() -> Result<(), Box<dyn std::error::Error>>`, built with
  CARGO_TARGET_DIR=harness/target (shared with the other Rust builds, so
  nothing is compiled twice; offline first, from the crates already
  downloaded, else online) and run with $CRSQL_STREAM_EXT naming
  dist/libcrsql_stream.so;
* Node: the README's `npm install better-sqlite3 <tarball>` in the scratch
  directory (seeded with target/node-test/node_modules when
  `make node-binding-test` has built better-sqlite3 there, so it is not
  compiled again), the snippet run with node.

Each snippet must exit 0 and leave a.db and b.db in its directory with the
same `todos`, holding the row the snippet inserted on a. Python and Node run
with $CRSQL_STREAM_EXT unset, so only the library inside the package can load.

Usage: python3 tests/readme_snippets.py [python|rust|node ...]
Environment: PYTHON (default /usr/bin/python3), CARGO (default cargo),
KEEP_SCRATCH=1 keeps the scratch directories.
"""

import glob
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
CARGO = os.environ.get("CARGO", "cargo")
EXT = os.path.join(ROOT, "dist", "libcrsql_stream.so")
README = os.path.join(ROOT, "README.md")
EXPECTED_ROWS = [("t1", "buy milk")]


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------
# README parsing


def bindings_sections():
    """{"Python": [(lang, code), ...], "Rust": ..., "Node": ...} from README.md."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## Bindings\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        raise Failure("README.md has no '## Bindings' section")
    sections = {}
    for sub in re.finditer(r"^### (\w+)[^\n]*\n(.*?)(?=^### |\Z)", m.group(1), re.M | re.S):
        blocks = re.findall(r"^```(\w*)\n(.*?)^```[ \t]*$", sub.group(2), re.M | re.S)
        sections[sub.group(1)] = blocks
    return sections


def block(sections, name, lang):
    if name not in sections:
        raise Failure("README.md '## Bindings' has no '### %s' subsection" % name)
    found = [code for (l, code) in sections[name] if l == lang]
    if len(found) != 1:
        raise Failure("README.md '### %s': expected one ```%s block, found %d" % (name, lang, len(found)))
    return found[0]


def repo_file(pattern, what):
    """The one file of the repository a README command names (a glob, relative to the root)."""
    if pattern.startswith("./"):
        pattern = pattern[2:]
    hits = glob.glob(os.path.join(ROOT, pattern))
    if len(hits) != 1:
        raise Failure(
            "README %s names %r, which matches %d files in the repository (build it first?)"
            % (what, pattern, len(hits))
        )
    return hits[0]


def install_args(sh, tool, suffix):
    """The arguments of `<tool> install ...` in a README sh line that end with `suffix`."""
    for cmd in re.split(r"&&|;|\n", sh):
        words = shlex.split(cmd)
        for i, w in enumerate(words):
            if (w == tool or w.endswith("/" + tool)) and i + 1 < len(words) and words[i + 1] == "install":
                return words[i + 2 :], [a for a in words[i + 2 :] if a.endswith(suffix)]
    raise Failure("README sh block has no `%s install` command: %r" % (tool, sh))


# ---------------------------------------------------------------------------
# running


def run(cmd, cwd, env=None, what=None):
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise Failure(
            "%s failed (exit %d): %s\n%s" % (what or "command", p.returncode, " ".join(map(str, cmd)), p.stdout)
        )
    return p.stdout, time.monotonic() - t


def env_without_ext(**extra):
    env = dict(os.environ)
    env.pop("CRSQL_STREAM_EXT", None)
    env.update(extra)
    return env


def check_converged(d, lang):
    rows = {}
    for name in ("a.db", "b.db"):
        path = os.path.join(d, name)
        if not os.path.isfile(path):
            raise Failure("%s snippet left no %s in %s" % (lang, name, d))
        # The CRR triggers call the extension's functions; reading needs none.
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            rows[name] = conn.execute("SELECT id, title FROM todos ORDER BY id").fetchall()
        finally:
            conn.close()
    if rows["a.db"] != rows["b.db"] or rows["b.db"] != EXPECTED_ROWS:
        raise Failure(
            "%s snippet: a.db and b.db did not converge on %r: a.db %r, b.db %r"
            % (lang, EXPECTED_ROWS, rows["a.db"], rows["b.db"])
        )


SCRATCH = []


def scratch(lang):
    d = os.path.realpath(tempfile.mkdtemp(prefix="crsql-readme-%s-" % lang))
    SCRATCH.append(d)
    if os.path.commonpath([d, os.path.realpath(ROOT)]) == os.path.realpath(ROOT):
        raise Failure("scratch directory %s is inside the repository; set TMPDIR elsewhere" % d)
    return d


def test_python(sections):
    sh = block(sections, "Python", "sh")
    code = block(sections, "Python", "python")
    _, wheels = install_args(sh, "pip", ".whl")
    if len(wheels) != 1:
        raise Failure("README Python install line names %d wheels: %r" % (len(wheels), sh))
    wheel = repo_file(wheels[0], "Python install line")
    d = scratch("python")
    venv = os.path.join(d, ".venv")
    run([PYTHON, "-m", "venv", venv], d, what="python -m venv")
    run(
        [os.path.join(venv, "bin", "pip"), "install", "-q", "--disable-pip-version-check", wheel],
        d,
        what="pip install of the wheel",
    )
    with open(os.path.join(d, "snippet.py"), "w") as f:
        f.write(code)
    run([os.path.join(venv, "bin", "python"), "snippet.py"], d, env=env_without_ext(), what="the Python snippet")
    check_converged(d, "Python")
    return os.path.basename(wheel)


def test_rust(sections):
    toml = block(sections, "Rust", "toml")
    code = block(sections, "Rust", "rust")
    binding = os.path.join(ROOT, "bindings", "rust")
    dep_re = re.compile(r'(path\s*=\s*")([^"]*bindings/rust)(")')
    if len(dep_re.findall(toml)) != 1:
        raise Failure("README Rust [dependencies]: expected one `path = \".../bindings/rust\"`: %r" % toml)
    toml = dep_re.sub(lambda m: m.group(1) + binding + m.group(3), toml)
    if not toml.lstrip().startswith("[dependencies]"):
        raise Failure("README Rust toml block does not start with [dependencies]: %r" % toml)
    d = scratch("rust")
    name = "crsql_readme_snippet"
    run([CARGO, "new", "--quiet", "--vcs", "none", "--bin", name], d, what="cargo new")
    proj = os.path.join(d, name)
    manifest = os.path.join(proj, "Cargo.toml")
    with open(manifest) as f:
        generated = f.read()
    # cargo new ends the manifest with an empty [dependencies]; the README's replaces it.
    generated = re.sub(r"\n\[dependencies\]\s*\Z", "\n", generated)
    if "[dependencies]" in generated:
        raise Failure("unexpected manifest from cargo new:\n" + generated)
    with open(manifest, "w") as f:
        f.write(generated + "\n" + toml)
    body = "".join("    " + line if line.strip() else line for line in code.splitlines(True))
    with open(os.path.join(proj, "src", "main.rs"), "w") as f:
        f.write("fn main() -> Result<(), Box<dyn std::error::Error>> {\n" + body + "    Ok(())\n}\n")
    target = os.path.join(ROOT, "harness", "target")
    build_env = dict(os.environ, CARGO_TARGET_DIR=target)
    try:
        # The crates the other builds already downloaded are usually enough
        # (no network, and the compiled ones are reused) ...
        run([CARGO, "build", "--release", "--quiet", "--offline"], proj, env=build_env)
    except Failure:
        # ... else resolve against crates.io as a user's first build does.
        run(
            [CARGO, "build", "--release", "--quiet"],
            proj,
            env=build_env,
            what="cargo build of the Rust snippet",
        )
    exe = os.path.join(target, "release", name)
    run([exe], proj, env=dict(os.environ, CRSQL_STREAM_EXT=EXT), what="the Rust snippet")
    check_converged(proj, "Rust")
    return None


def test_node(sections):
    sh = block(sections, "Node", "sh")
    code = block(sections, "Node", "js")
    args, tarballs = install_args(sh, "npm", ".tgz")
    if len(tarballs) != 1:
        raise Failure("README Node install line names %d tarballs: %r" % (len(tarballs), sh))
    tarball = repo_file(tarballs[0], "Node install line")
    args = [tarball if a == tarballs[0] else a for a in args]
    d = scratch("node")
    seed = os.path.join(ROOT, "target", "node-test", "node_modules")
    if os.path.isdir(os.path.join(seed, "better-sqlite3", "build", "Release")):
        # better-sqlite3 as `make node-binding-test` built it (from source, minutes).
        shutil.copytree(seed, os.path.join(d, "node_modules"), symlinks=True)
    run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"] + args,
        d,
        what="npm install (README line)",
    )
    # The package installed is the tarball's, not a copy the seed brought along.
    lib = os.path.join(d, "node_modules", "crsql-stream", "lib", "libcrsql_stream.so")
    with tarfile.open(tarball) as t, open(lib, "rb") as f:
        if f.read() != t.extractfile("package/lib/libcrsql_stream.so").read():
            raise Failure("the installed %s is not the one in %s" % (lib, tarball))
    with open(os.path.join(d, "snippet.js"), "w") as f:
        f.write(code)
    env = env_without_ext()
    env.pop("NODE_PATH", None)
    run(["node", "snippet.js"], d, env=env, what="the Node snippet")
    check_converged(d, "Node")
    return os.path.basename(tarball)


TESTS = {"python": test_python, "rust": test_rust, "node": test_node}


def main(argv):
    which = argv[1:] or list(TESTS)
    for w in which:
        if w not in TESTS:
            print("unknown snippet %r (one of %s)" % (w, ", ".join(TESTS)), file=sys.stderr)
            return 2
    if not os.path.isfile(EXT):
        print("readme-test: %s is missing; run make first" % EXT, file=sys.stderr)
        return 1
    sections = bindings_sections()
    failed = 0
    for w in which:
        t = time.monotonic()
        del SCRATCH[:]
        try:
            artifact = TESTS[w](sections)
        except Failure as e:
            failed += 1
            print("readme-test: %s snippet FAILED: %s" % (w, e), file=sys.stderr)
            for d in SCRATCH:
                print("readme-test: scratch directory kept: %s" % d, file=sys.stderr)
            continue
        print(
            "readme-test: %-6s snippet ran as written, a.db and b.db converged (%.1fs%s)"
            % (w, time.monotonic() - t, ", " + artifact if artifact else "")
        )
        for d in SCRATCH:
            if os.environ.get("KEEP_SCRATCH"):
                print("readme-test: scratch directory kept: %s" % d)
            else:
                shutil.rmtree(d, ignore_errors=True)
    if failed:
        print("readme-test: %d snippet(s) failed" % failed, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
