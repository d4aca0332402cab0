#!/usr/bin/env bash
# sharp's benchmark task (2725×2225 JPEG → Lanczos3 720×588 → JPEG q80) side by side in one run:
# our pure-Rust build, our libjpeg-turbo build (shrink on load) and sharp from npm, at 1 and 2
# threads, on the same fixtures, rounds interleaved so drift hits all alike. Prints the medians
# and the ratios to sharp; the raw JSON lines go to $OUT (default target/sharp-task.jsonl).
#
#     imaging/bench/sharp-task.sh [seconds per run, default 8] [rounds, default 3]
#
# Three fixtures at sharp's size: `synthetic` (generated, photo-like with heavy fine texture, q90
# with chroma 4:2:0 as phones write: 2.0 MB, about 2.7 bits per pixel, the upper end of phone
# photos, so entropy decoding dominates), `synthetic-444` (the same pixels with full-size chroma:
# 2.2 MB, the heaviest case) and `photo` (a real photograph, KDE's "Path" wallpaper from Debian's
# plasma-workspace-wallpapers, cropped and scaled to 2725×2225 by sharp, q90, 4:2:0), since
# sharp's own fixture is a photograph we cannot fetch here. Needs cmake and nasm for the
# turbojpeg build (Debian packages), and npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
secs=${1:-8}
rounds=${2:-3}
out=${OUT:-target/sharp-task.jsonl}
bin=target/sharp-task-bin
mkdir -p "$bin"
cargo build --quiet --release -p imaging --example sharp_task
cp target/release/examples/sharp_task "$bin/pure-rust"
cargo build --quiet --release -p imaging --example sharp_task --features turbojpeg
cp target/release/examples/sharp_task "$bin/turbojpeg"
(cd imaging/bench && npm install --no-audit --no-fund --silent)
fixtures=$(mktemp -d)
"$bin/pure-rust" --fixture "$fixtures/synthetic.jpg" --sampling 420 --seconds 0.2 >/dev/null
"$bin/pure-rust" --fixture "$fixtures/synthetic-444.jpg" --sampling 444 --seconds 0.2 >/dev/null
(cd "$fixtures" && apt-get download plasma-workspace-wallpapers >/dev/null && dpkg -x plasma-workspace-wallpapers_*.deb x)
node imaging/bench/sharp-task.mjs --make-fixture "$fixtures/x/usr/share/wallpapers/Path/contents/images/2560x1600.jpg" --fixture "$fixtures/photo.jpg"
: > "$out"
for round in $(seq "$rounds"); do
  for name in synthetic synthetic-444 photo; do
    fixture=$fixtures/$name.jpg
    # Each run's JSON line gains the fixture's name and the CPU time the process used (user +
    # system, from /usr/bin/time), since sharp at "one thread" also runs node's main thread.
    run() {
      /usr/bin/time -o "$fixtures/cpu" -f "%U %S" "$@" > "$fixtures/line"
      cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$fixtures/cpu")
      sed "s/^{/{\"fixture\":\"$name\",\"cpu_s\":$cpu,/" "$fixtures/line" | tee -a "$out"
    }
    for t in 1 2; do
      run "$bin/pure-rust" --fixture "$fixture" --threads "$t" --seconds "$secs"
      run "$bin/turbojpeg" --fixture "$fixture" --threads "$t" --seconds "$secs"
      # sharp at t threads, both ways it can use them: t operations in flight with one libvips
      # thread each, and (t > 1) one operation at a time with t libvips threads. Its best counts.
      run env UV_THREADPOOL_SIZE="$t" node imaging/bench/sharp-task.mjs --fixture "$fixture" --inflight "$t" --vips 1 --seconds "$secs"
      if [ "$t" -gt 1 ]; then
        run env UV_THREADPOOL_SIZE="$t" node imaging/bench/sharp-task.mjs --fixture "$fixture" --inflight 1 --vips "$t" --seconds "$secs"
      fi
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def key(r):
    if r["impl"].startswith("sharp"):
        return (r["fixture"], "sharp", r.get("threadpool", 1), f"inflight {r['inflight']}, vips {r['vips']}")
    return (r["fixture"], r["impl"], r["threads"], "")
runs, eff = {}, {}
for r in rows:
    runs.setdefault(key(r), []).append(r["ops_per_sec"])
    eff.setdefault(key(r), []).append(r["ops"] / r["cpu_s"])
med = {k: statistics.median(v) for k, v in runs.items()}
per_cpu = {k: statistics.median(v) for k, v in eff.items()}
for fx in ("synthetic", "synthetic-444", "photo"):
    size = next(r["input_bytes"] for r in rows if r["fixture"] == fx)
    print(f"\n{fx} fixture, {size} bytes; medians of {max(len(v) for v in runs.values())} runs")
    for t in (1, 2):
        sharp = {k[3]: v for k, v in med.items() if k[0] == fx and k[1] == "sharp" and k[2] == t}
        best_cfg, best = max(sharp.items(), key=lambda kv: kv[1])
        best_eff = per_cpu[(fx, "sharp", t, best_cfg)]
        print(f"threads {t}: sharp {best:.1f} ops/s, {best_eff:.1f} per CPU-second ({best_cfg})" + "".join(
            f"; {cfg} {v:.1f} ops/s" for cfg, v in sharp.items() if cfg != best_cfg))
        for impl in ("turbojpeg", "pure-rust"):
            v, e = med[(fx, impl, t, "")], per_cpu[(fx, impl, t, "")]
            print(f"  {impl:9} {v:6.1f} ops/s = {v / best:.2f}x sharp; {e:6.1f} per CPU-second = {e / best_eff:.2f}x")
PY
