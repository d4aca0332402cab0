#!/usr/bin/env bash
# The load-test numbers in docs/performance.md, in one run on this machine:
#   1. clinic-morning against a fresh `clinic serve --demo`;
#   2. the capacity search on the raw UDP relay, our SFU and Janus VideoRoom, one after the other,
#      with the same synthetic peers (one report: target/loadtest/capacity/report.html);
#   3. 10,000 join/leave cycles with the server's memory sampled every 500.
# Needs root (Janus gets a local address on a veth pair: libnice never gathers on loopback) and
# installs Debian's janus if it is missing. Everything stays on this machine.
#
#     loadtest/bench.sh [capacity --max, default 160]
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-160}
command -v janus >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null
cargo build --quiet --release -p clinic-api -p loadtest
lt=target/release/loadtest
$lt run clinic-morning --assert-clean --out target/loadtest/clinic-morning
$lt capacity --target all --from 8 --step 8 --max "$max" --step-s 12 --out target/loadtest/capacity
$lt churn --warmup 5000 --cycles 10000 --every 500 --assert-clean --max-rss-trend-mib 1 --out target/loadtest/churn
echo "reports: target/loadtest/{clinic-morning,capacity}/report.html, target/loadtest/churn/churn.json"
