#!/usr/bin/env bash
# Run every sql-tests/*.sql through the sqlite3 shell and compare its output
# (stdout and stderr merged) with the .expected file beside it.
#
#   bash sql-tests/run.sh            run all tests
#   bash sql-tests/run.sh --bless    rewrite the .expected files (review the diff!)
#   bash sql-tests/run.sh NAME...    run only the tests whose name contains NAME
#
# Environment:
#   SQLITE3            the shell to use (default: sqlite3)
#   CRSQL_STREAM_EXT   the extension to load (default: ../dist/libcrsql_stream)
#   CRSQL_TEST_LAYOUT  the CRR layout the tests' CRRs get: crsqlite (the
#                      default) or compact (docs/compact-layout.md)
#
# Each test runs in its own empty temporary directory, as
# `sqlite3 -batch -init /dev/null`, with its SQL on stdin. A line
# `.load EXT` in a test is replaced by `.load "<path of the extension>"`.
#
# With CRSQL_TEST_LAYOUT=compact, every `.load EXT` is followed by a
# silent `crsql_config_set('crr-layout', 'compact')` (unless the database
# has that setting already), so the same files run on the compact layout
# (DECISIONS D42). A test whose output shows the layout's own tables has a
# second expectation, NAME.compact.expected, used on that layout only;
# `--bless` with the compact layout writes it only when the output differs
# from NAME.expected (and removes it when it no longer does).
#
# The output is normalised so that it does not depend on the SQLite release:
# - the shell's error prefix (`Parse error near line 5: `, `Runtime error near
#   line 5: `, `Error: near line 5: `, `Error: stepping, `...) becomes `Error: `;
#   a trailing ` (21)` (the result code, printed for codes other than
#   SQLITE_ERROR) is kept, so it is asserted too;
# - the source excerpt and `^--- error here` marker that some releases print
#   after a parse error are dropped;
# - the extension path becomes EXT and the test's directory becomes TMPDIR.
#
# Then a coverage check: every crsql% function and module registered by the
# extension must be mentioned in at least one .sql file other than surface.sql.
#
# The last line is `N passed, N failed`; the exit status is 1 if anything failed.

set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SQLITE3=${SQLITE3:-sqlite3}
ext=${CRSQL_STREAM_EXT:-$here/../dist/libcrsql_stream}
case "$ext" in
/*) ;;
*) ext="$PWD/$ext" ;;
esac
# Resolve `..` so that the path printed in errors is the one we normalise.
ext="$(cd "$(dirname "$ext")" 2>/dev/null && pwd)/$(basename "$ext")"

layout=${CRSQL_TEST_LAYOUT:-crsqlite}
case "$layout" in
crsqlite | compact) ;;
*)
    echo "run.sh: CRSQL_TEST_LAYOUT must be crsqlite or compact, got '$layout'" >&2
    exit 2
    ;;
esac

bless=0
filters=()
for a in "$@"; do
    case "$a" in
    --bless) bless=1 ;;
    -h | --help)
        sed -n '2,37p' "$0"
        exit 0
        ;;
    *) filters+=("$a") ;;
    esac
done

if ! command -v "$SQLITE3" >/dev/null 2>&1; then
    echo "run.sh: $SQLITE3 not found (set SQLITE3)" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/crsql-sql-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The test's SQL with `.load EXT` pointing at the extension (and, on the
# compact layout, followed by the setting, its output discarded).
substitute() {
    EXT_PATH="$ext" LAYOUT="$layout" awk '
        /^[ \t]*\.load[ \t]+EXT[ \t]*$/ {
            sub(/EXT[ \t]*$/, "\"" ENVIRON["EXT_PATH"] "\""); print
            if (ENVIRON["LAYOUT"] == "compact") {
                print ".output /dev/null"
                print "SELECT crsql_config_set(\x27crr-layout\x27, \x27compact\x27) WHERE crsql_config_get(\x27crr-layout\x27) != \x27compact\x27;"
                print ".output"
            }
            next
        }
        { print }
    ' "$1"
}

# Normalise the shell's output (see the header). $1 = the test's directory.
normalise() {
    EXT_PATH="$ext" EXT_NOSO="${ext%.so}" DIR="$1" awk '
        function fix(s,    i) {
            # Longest first: the path with .so, then without.
            while ((i = index(s, ENVIRON["EXT_PATH"])) > 0)
                s = substr(s, 1, i - 1) "EXT" substr(s, i + length(ENVIRON["EXT_PATH"]))
            while ((i = index(s, ENVIRON["EXT_NOSO"])) > 0)
                s = substr(s, 1, i - 1) "EXT" substr(s, i + length(ENVIRON["EXT_NOSO"]))
            while ((i = index(s, ENVIRON["DIR"])) > 0)
                s = substr(s, 1, i - 1) "TMPDIR" substr(s, i + length(ENVIRON["DIR"]))
            return s
        }
        function flush() { if (have) print held; have = 0 }
        {
            line = $0
            # Source excerpt + caret after a parse error: drop both lines.
            if (line ~ /^ *\^--- error here$/) {
                if (have && held ~ /^  /) have = 0
                next
            }
            if (line ~ /^(Parse error|Runtime error|Error):? near line [0-9]+: /) {
                sub(/^(Parse error|Runtime error|Error):? near line [0-9]+: /, "Error: ", line)
            } else if (line ~ /^(Parse error|Runtime error): /) {
                sub(/^(Parse error|Runtime error): /, "Error: ", line)
            } else if (line ~ /^Error: in prepare, /) {
                sub(/^Error: in prepare, /, "Error: ", line)
            } else if (line ~ /^Error: stepping, /) {
                sub(/^Error: stepping, /, "Error: ", line)
            }
            flush()
            held = fix(line); have = 1
        }
        END { flush() }
    '
}

passed=0
failed=0
failures=()

selected() {
    local name=$1 f
    [ ${#filters[@]} -eq 0 ] && return 0
    for f in "${filters[@]}"; do
        case "$name" in *"$f"*) return 0 ;; esac
    done
    return 1
}

for sql in "$here"/*.sql; do
    name=$(basename "$sql" .sql)
    selected "$name" || continue
    expected="$here/$name.expected"
    layout_expected="$here/$name.compact.expected"
    if [ "$layout" = compact ] && { [ -f "$layout_expected" ] || [ "$bless" -eq 1 ]; }; then
        expected=$layout_expected
    fi
    dir="$work/$name"
    mkdir -p "$dir"
    substitute "$sql" >"$work/$name.in"
    actual=$(cd "$dir" && timeout 60 "$SQLITE3" -batch -init /dev/null <"$work/$name.in" 2>&1 | normalise "$dir"; exit "${PIPESTATUS[0]}")
    status=$?
    if [ "$status" -eq 124 ]; then
        actual+=$'\n'"run.sh: timed out after 60 s"
    elif [ "$status" -gt 128 ]; then
        actual+=$'\n'"run.sh: sqlite3 killed by signal $((status - 128))"
    fi
    if [ "$bless" -eq 1 ]; then
        printf '%s\n' "$actual" >"$expected"
        if [ "$expected" = "$layout_expected" ] && cmp -s "$expected" "$here/$name.expected"; then
            rm -f "$expected"
        fi
        echo "BLESS $name"
        passed=$((passed + 1))
        continue
    fi
    if [ ! -f "$expected" ]; then
        echo "FAIL $name (no $name.expected; run with --bless and review it)"
        failed=$((failed + 1))
        failures+=("$name")
        continue
    fi
    if diff_out=$(diff -u --label "$name.expected" --label "$name.actual" "$expected" <(printf '%s\n' "$actual")); then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        printf '%s\n' "$diff_out" | sed 's/^/    /'
        failed=$((failed + 1))
        failures+=("$name")
    fi
done

# Coverage: every registered crsql% function and module (and clset) is named in a test.
if [ ${#filters[@]} -eq 0 ]; then
    names=$(cd "$work" && "$SQLITE3" -batch -init /dev/null :memory: \
        ".load \"$ext\"" \
        "SELECT name FROM pragma_function_list WHERE name LIKE 'crsql%' UNION SELECT name FROM pragma_module_list WHERE name LIKE 'crsql%' OR name = 'clset' ORDER BY 1;" 2>&1)
    if [ $? -ne 0 ] || [ -z "$names" ]; then
        echo "FAIL surface-coverage (could not list the registered names)"
        printf '%s\n' "$names" | sed 's/^/    /'
        failed=$((failed + 1))
        failures+=("surface-coverage")
    else
        others=()
        for f in "$here"/*.sql; do
            [ "$(basename "$f")" = surface.sql ] || others+=("$f")
        done
        missing=()
        while IFS= read -r n; do
            [ -n "$n" ] || continue
            if [ ${#others[@]} -eq 0 ] || ! grep -qw -- "$n" "${others[@]}"; then
                missing+=("$n")
            fi
        done <<<"$names"
        if [ ${#missing[@]} -eq 0 ]; then
            echo "PASS surface-coverage"
            passed=$((passed + 1))
        else
            echo "FAIL surface-coverage: registered but not mentioned in any test other than surface.sql:"
            printf '    %s\n' "${missing[@]}"
            failed=$((failed + 1))
            failures+=("surface-coverage")
        fi
    fi
fi

if [ ${#failures[@]} -gt 0 ]; then
    echo "failed: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
