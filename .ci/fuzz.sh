#!/usr/bin/env bash
# The fuzz suite: builds the libFuzzer targets (fuzz/libfuzzer, one per harness function in
# fuzz/src/lib.rs) and runs each for SECONDS (default 60), starting from fuzz/seeds/<target>/
# plus the corpus kept from earlier runs (target/fuzz-corpus/<target>/). Prints one line per
# target: executions, executions a second, corpus size. A crash stops the script with the input's
# path: fix it, then copy the input into fuzz/regressions/<target>/, where the stable test
# `cargo test -p clinic-fuzz` replays it for good.
#
#   .ci/fuzz.sh [SECONDS] [TARGET ...]
#   FUZZ_PROFILE=release (default) or dev (quicker to build, slower to run: CI's bounded pass)
#
# Nightly is used when rustup has it (`rustup toolchain list`), else stable with
# RUSTC_BOOTSTRAP=1. No sanitizer (`-s none`): the code under test is Rust, and the server's
# jemalloc serves malloc, which AddressSanitizer would have to replace.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(signaling_frame sdp_offer image_upload api_bodies mfa_codes)
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
profile=()
[ "${FUZZ_PROFILE:-release}" = dev ] && profile=(--dev)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
dir=fuzz/libfuzzer
"${fuzz[@]}" build --fuzz-dir "$dir" -s none "${profile[@]}"
printf '%-16s %12s %10s %8s\n' target executions "exec/s" corpus
for t in "${targets[@]}"; do
  corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus" "$dir/artifacts/$t"
  log=target/fuzz-corpus/$t.log
  if ! "${fuzz[@]}" run --fuzz-dir "$dir" -s none "${profile[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$dir/artifacts/$t/" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t failed; the input is under $dir/artifacts/$t/ (keep it in fuzz/regressions/$t/ with the fix)" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  printf '%-16s %12s %10s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$(ls "$corpus" | wc -l)"
done
