# crsql_stream — build, test and tooling entry points.
# `make` builds dist/libcrsql_stream.so; `make test` runs everything CI runs.

CARGO   ?= cargo
EXT     := dist/libcrsql_stream.so
SQLITE3 ?= sqlite3
PYTHON  ?= /usr/bin/python3
export CRSQL_STREAM_EXT := $(abspath $(EXT))

.PHONY: all build test unit harness-test sql-test sql-bless py-test check fmt clippy soak bench demo fuzz clean

all: build

build:
	$(CARGO) build --release -p crsql_stream
	@mkdir -p dist
	cp target/release/libcrsql_stream.so $(EXT).tmp && mv -f $(EXT).tmp $(EXT)

# Everything CI runs.
test: build unit harness-test sql-test py-test
	@echo "make test: all suites passed"

# Pure-Rust unit and property tests (core/ and ext/).
unit:
	$(CARGO) test --workspace --release

# Integration tests: the built .so loaded into real connections (rusqlite, bundled SQLite).
harness-test: build
	cd harness && $(CARGO) test --release

# SQL files run through the real sqlite3 shell against expected output.
sql-test: build
	bash sql-tests/run.sh

sql-bless: build
	bash sql-tests/run.sh --bless

# Python's stdlib sqlite3 (Debian, SQLite 3.40.1) loading the extension.
py-test: build
	$(PYTHON) -m unittest discover -s tests/python -v

fmt:
	$(CARGO) fmt --all
	cd harness && $(CARGO) fmt

check: build
	$(CARGO) fmt --all -- --check
	cd harness && $(CARGO) fmt -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings
	cd harness && $(CARGO) clippy --all-targets --release -- -D warnings
	$(MAKE) test

# Long property runs.
soak: build
	cd harness && PROPTEST_CASES=$${PROPTEST_CASES:-3000} $(CARGO) test --release -- --include-ignored soak

bench: build
	cd harness && $(CARGO) run --release --bin bench

demo: build
	bash demo/demo.sh

clean:
	$(CARGO) clean
	cd harness && $(CARGO) clean
	rm -rf dist
