#!/usr/bin/env bash
# What request ids, trace context and reading responses' usage cost per request (issue 15),
# measured against a knockout build: the committed HEAD with usage-ids-off.patch applied (no
# x-request-id read, made, sent upstream or returned; no traceparent read or started; no usage
# reader, so no token counts), everything else the same. Three measurements, all with release
# builds:
#
#  1. request-cost (callgrind + /proc, one worker thread, closed loop) on the current proxy and
#     on the knockout: instructions per request of each (the difference is the exact cost,
#     inlined code and the header inserts' allocations included), CPU µs per request, and
#     instructions per user-CPU µs of the same run (to turn instructions into time);
#  2. callgrind_annotate --inclusive=yes of the current proxy's dumps: the inclusive
#     instructions of the functions of proxy/src/request/{id,trace,usage,stream_usage,pace}.rs
#     that are not inlined (per 1 request: the dumps hold --requests requests);
#  3. latency-check --baseline-bin <knockout>, interleaved arrivals over direct, proxy and
#     knockout (open loop, hdrhistogram), RUNS times.
#
# usage: benches/ab/usage-ids-cost.sh [OUT_DIR]   (env: REQUESTS, RUNS, RATE, KO_TARGET_DIR)
# The knockout target dir starts as a copy of this one's release dir (registry crates are not
# rebuilt). The patch is against the proxy as of its commit: if it no longer applies, redo its
# three hunks by hand (ctx.rs identify, gateway.rs response_filter and the usage reader).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
out=$(realpath -m "${1:-$root/target/usage-ids-cost}")
target=$(realpath -m "${CARGO_TARGET_DIR:-$root/target}")
ko_target=$(realpath -m "${KO_TARGET_DIR:-$target-knockout}")
requests=${REQUESTS:-5000}
runs=${RUNS:-3}
rate=${RATE:-1500}
mkdir -p "$out"

cd "$root"
cargo build --release -p multiverse-proxy --bin multiverse-proxy
cargo build --release -p multiverse-mocks --bin mock-openai --bin mock-tei
cargo build --release -p multiverse-benches --bin request-cost --bin latency-check
rel=$target/release

scratch=$(mktemp -d)
wt=$scratch/knockout
git worktree add --detach "$wt" HEAD >/dev/null
trap 'git -C "$root" worktree remove --force "$wt"; rm -rf "$scratch"' EXIT
git -C "$wt" apply "$root/benches/ab/usage-ids-off.patch"
if [ ! -d "$ko_target/release" ]; then
  mkdir -p "$ko_target"
  cp -a "$target/release" "$ko_target/"
fi
(cd "$wt" && CARGO_TARGET_DIR=$ko_target cargo build --release -p multiverse-proxy --bin multiverse-proxy)
ko=$out/multiverse-proxy-knockout
cp "$ko_target/release/multiverse-proxy" "$ko"

cost() { # name, extra args
  local name=$1
  shift
  rm -rf "$out/cg-$name"
  "$rel/request-cost" --only chat,sse --targets proxy --measure native,callgrind \
    --requests "$requests" --warmup 200 --idle-secs 0 --keep "$out/cg-$name" \
    --json "$out/cost-$name.json" "$@" | tee "$out/cost-$name.txt"
}
uptime | tee "$out/uptime-before.txt"
cost current
cost knockout --proxy-bin "$ko"

for dump in "$out"/cg-current/*.callgrind; do
  callgrind_annotate --inclusive=yes --threshold=100 "$dump" >"$dump.inclusive.txt"
  echo "== $(basename "$dump"): inclusive instructions per request of the request-id, trace and usage functions"
  grep -E 'request::(id|trace|usage|stream_usage|pace)::|request_id::|otlp::parse_traceparent' \
    "$dump.inclusive.txt" | awk -v n="$requests" '
      match($0, /^ *[0-9,]+ +\( *[0-9.]+%\) +/) {
        ir = $1; gsub(",", "", ir)
        printf "%10.1f  %s\n", ir / n, substr($0, RLENGTH + 1)
      }' | cut -c1-200
done | tee "$out/attribution.txt"

for i in $(seq "$runs"); do
  "$rel/latency-check" --rate "$rate" --baseline-bin "$ko" | tee "$out/latency-$i.txt"
done
uptime | tee "$out/uptime-after.txt"
