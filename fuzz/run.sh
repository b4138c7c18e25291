#!/usr/bin/env bash
# Run a fuzzing campaign over the cargo-fuzz targets, one after the other, and
# print a summary table. What `make fuzz` runs.
#
#   bash fuzz/run.sh [TARGET...]        (default: every [[bin]] of fuzz/Cargo.toml)
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 60)
#   CARGO          cargo to use (default cargo)
#   FUZZ_ARGS      extra libFuzzer flags appended to the defaults below
#
# Each target runs as one libFuzzer process (no -jobs/-workers: one core) with
# corpus/<target>/ (kept between runs, not tracked) and seeds/<target>/ (the
# checked-in seeds, read only) as corpus directories. libFuzzer's output goes
# to target/fuzz-logs/<target>.log. A crash (a panic, a failed assertion, an
# ASan report, an allocation over -malloc_limit_mb, an input running longer
# than -timeout) makes libFuzzer exit non-zero and write the input to
# artifacts/<target>/; the campaign goes on with the next target.
#
# The table lists per target: the seconds run, the executions
# (stat::number_of_executed_units of -print_final_stats), executions per
# second, the final coverage (cov:), the corpus size (corp:), the peak RSS and
# the crashes (artifacts written by this run). The exit status is 1 when a
# target crashed or could not run (a build error: `error` in the table),
# else 0.
#
# A crash: minimise it (RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> <artifact>),
# then keep it as core/tests/fuzz-crashers/<target>-<what-it-broke>.bin, where
# core/tests/fuzz_regressions.rs checks that it is rejected cleanly.

set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
CARGO=${CARGO:-cargo}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# cargo-fuzz passes -Z flags to rustc (sanitizer, coverage); stable Rust
# accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
# One core: the build too (others share the machine).
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name *=/ { gsub(/.*= *"|".*/, ""); print; bin = 0 }' Cargo.toml)
fi

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; installing it from crates.io" >&2
    "$CARGO" install cargo-fuzz --locked || exit 2
fi

logs="$here/target/fuzz-logs"
mkdir -p "$logs"

# Build every target once first, so that a build error shows up before any
# fuzzing time is spent (and the per-target times below are fuzzing only).
echo "== building ${targets[*]}"
for t in "${targets[@]}"; do
    "$CARGO" fuzz build "$t" || { echo "fuzz/run.sh: building $t failed" >&2; exit 2; }
done

rows=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    log="$logs/$t.log"
    echo "== $t: ${FUZZ_SECONDS}s (log: fuzz/target/fuzz-logs/$t.log)"
    start=$(date +%s)
    # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
    "$CARGO" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -malloc_limit_mb=64 -timeout=10 \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
    status=$?
    secs=$(($(date +%s) - start))
    # The artifacts this run wrote ("Test unit written to <path>"); slow-unit-*
    # files are only a note, not a failure.
    mapfile -t arts < <(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | grep -v '/slow-unit-' | sed "s|^$here/|fuzz/|")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -Eo '(DONE|pulse|NEW|REDUCE|INITED) +cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$')
    corp=$(grep -Eo 'corp: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$')
    execs=${execs:-?}
    rate="?"
    if [ "$execs" != "?" ] && [ "$secs" -gt 0 ]; then rate=$((execs / secs)); fi
    if [ "$status" -eq 0 ]; then
        crashes=${#arts[@]}
    elif [ ${#arts[@]} -gt 0 ]; then
        crashes=${#arts[@]}
        failed=1
        echo "   CRASH (exit $status): ${arts[*]}"
        grep -m1 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY:" "$log" | sed 's/^/   /'
    else
        crashes="error"
        failed=1
        echo "   exit $status without an artifact; the end of its log:"
        tail -15 "$log" | sed 's/^/   /'
    fi
    rows+=("$t|$secs|$execs|$rate|${cov:-?}|${corp:-?}|${rss:-?}|$crashes|${arts[*]:-}")
done

echo
echo "== fuzz summary (FUZZ_SECONDS=$FUZZ_SECONDS)"
{
    echo "target|seconds|executions|exec/s|cov|corpus|peak_rss_mb|crashes|artifacts"
    printf '%s\n' "${rows[@]}"
} | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NF > n ? NF : n }
    END { for (r = 1; r <= NR; r++) { line = ""; for (i = 1; i <= n; i++) line = line sprintf("%-" w[i] "s  ", cell[r, i]); sub(/ +$/, "", line); print line } }'
exit "$failed"
