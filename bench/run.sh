#!/usr/bin/env bash
# One command, one run, one table: how the real `receiver serve` binary keeps
# up against baselines measured on the same machine in the same run.
#
#   bash bench/run.sh
#
# Knobs (environment): BENCH_DURATION (each ingest load, default 10s),
# BENCH_CONCURRENCY (hey workers, default 16), BENCH_ARCHIVE_BYTES (export
# size, default 1 GiB), BENCH_SKIP_PIPELINE=1 (ingest only).
# Everything listens on 127.0.0.1 and every load is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

HEY_VERSION=v0.1.4
DURATION=${BENCH_DURATION:-10s}
CONC=${BENCH_CONCURRENCY:-16}
ARCHIVE=${BENCH_ARCHIVE_BYTES:-1073741824}
SECRET=bench-secret-$$
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/cvat-sync-bench/bin"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$TOOLS"
if [ ! -x "$TOOLS/hey-$HEY_VERSION" ]; then
  echo "installing hey $HEY_VERSION" >&2
  GOBIN="$TOOLS" go install "github.com/rakyll/hey@$HEY_VERSION"
  mv "$TOOLS/hey" "$TOOLS/hey-$HEY_VERSION"
fi
HEY="$TOOLS/hey-$HEY_VERSION"

echo "building" >&2
go build -trimpath -o "$WORK/receiver" ./cmd/receiver
go build -trimpath -o "$WORK/bare" ./bench/cmd/bare
go build -trimpath -o "$WORK/pipebench" ./bench/cmd/pipebench

# start NAME CMD...: runs CMD in the background with stdout in $WORK/NAME.log,
# waits for its {"message":"listening","addr":...} line and sets ADDR and PID.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>"$WORK/$name.err" &
  PID=$!
  PIDS+=("$PID")
  local deadline=$((SECONDS + 30))
  ADDR=""
  while [ -z "$ADDR" ]; do
    ADDR=$(grep -m1 '"message":"listening"' "$WORK/$name.log" 2>/dev/null |
      sed -E 's/.*"addr":"([^"]+)".*/\1/' || true)
    if [ -z "$ADDR" ]; then
      if ! kill -0 "$PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        echo "$name did not start:" >&2; cat "$WORK/$name.err" "$WORK/$name.log" >&2; exit 1
      fi
      sleep 0.1
    fi
  done
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

hwm_mib() { awk '/^VmHWM:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

ROWS="$WORK/rows.tsv"
printf 'measure\tservice\tbaseline\tratio\ttarget\tholds\n' >"$ROWS"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$ROWS"; }

# load NAME URL BODY: bounded hey run; sets RPS P50_MS P99_MS BAD (non-2xx or
# errors).
load() {
  local name=$1 url=$2 body=$3 sig
  sig=$("$WORK/receiver" sign --secret "$SECRET" "$body")
  # warm-up, then the measured run
  "$HEY" -z 1s -c "$CONC" -m POST -T application/json -H "X-Signature-256: $sig" -D "$body" "$url" >/dev/null
  "$HEY" -z "$DURATION" -c "$CONC" -m POST -T application/json -H "X-Signature-256: $sig" -D "$body" "$url" >"$WORK/${name//\//-}.hey"
  RPS=$(awk '/Requests\/sec:/ {printf "%.0f", $2}' "$WORK/${name//\//-}.hey")
  P50_MS=$(awk '/ 50% in / {printf "%.2f", $3*1000}' "$WORK/${name//\//-}.hey")
  P99_MS=$(awk '/ 99% in / {printf "%.2f", $3*1000}' "$WORK/${name//\//-}.hey")
  BAD=$(awk '/^\s*\[[0-9]+\]/ { code=substr($1,2,3); if (code !~ /^2/) n+=$2 } END {print n+0}' "$WORK/${name//\//-}.hey")
  BAD=$((BAD + $(awk '/^Error distribution:/ {e=1; next} e && /\[[0-9]+\]/ {gsub(/[\[\]]/,"",$1); n+=$1} END {print n+0}' "$WORK/${name//\//-}.hey")))
  printf '  %-22s %8s req/s  p50 %6s ms  p99 %6s ms  non-2xx/errors %s\n' "$name" "$RPS" "$P50_MS" "$P99_MS" "$BAD" >&2
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2fx", a/b }'; }
cmp_ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
yes_no() { if "$@"; then echo yes; else echo NO; fi; }

echo "ingest: hey -z $DURATION -c $CONC per row, keep-alive, 127.0.0.1" >&2
for ev in ping update_job; do
  body=testdata/payloads/$ev.json

  start bare "$WORK/bare" -listen 127.0.0.1:0 -secret "$SECRET"
  load "bare/$ev" "http://$ADDR/webhooks/cvat" "$body"
  b_rps=$RPS b_p50=$P50_MS b_p99=$P99_MS b_bad=$BAD b_hwm=$(hwm_mib "$PID")
  stop "$PID"

  data="$WORK/data-$ev"
  start receiver env -i PATH="$PATH" HOME="$HOME" CVAT_SYNC_WEBHOOK_SECRET="$SECRET" \
    CVAT_SYNC_LISTEN=127.0.0.1:0 CVAT_SYNC_DATA_DIR="$data" \
    "$WORK/receiver" serve
  load "receiver/$ev" "http://$ADDR/webhooks/cvat" "$body"
  r_rps=$RPS r_p50=$P50_MS r_p99=$P99_MS r_bad=$BAD r_hwm=$(hwm_mib "$PID")
  stop "$PID"

  if [ "$ev" = ping ]; then target=0.9; else target=0.5; fi
  holds=$(yes_no cmp_ge "$(awk -v a="$r_rps" -v b="$b_rps" 'BEGIN{print a/b}')" "$target")
  if [ "$b_bad" != 0 ] || [ "$r_bad" != 0 ]; then holds="NO (errors: bare $b_bad, receiver $r_bad)"; fi
  row "ingest $ev req/s" "$r_rps" "$b_rps" "$(ratio "$r_rps" "$b_rps")" ">= ${target}x" "$holds"
  row "ingest $ev p50 ms" "$r_p50" "$b_p50" "$(ratio "$r_p50" "$b_p50")" "" ""
  if [ "$ev" = update_job ]; then
    row "ingest $ev p99 ms" "$r_p99" "$b_p99" "$(ratio "$r_p99" "$b_p99")" "< 20 ms" "$(yes_no cmp_ge 20 "$r_p99")"
  else
    row "ingest $ev p99 ms" "$r_p99" "$b_p99" "$(ratio "$r_p99" "$b_p99")" "" ""
  fi
  row "ingest $ev peak RSS MiB" "$r_hwm" "$b_hwm" "$(ratio "$r_hwm" "$b_hwm")" "" ""
done

if [ "${BENCH_SKIP_PIPELINE:-0}" != 1 ]; then
  echo "pipeline: export of a $ARCHIVE-byte archive, coalescing bursts" >&2
  "$WORK/pipebench" -receiver "$WORK/receiver" -archive-bytes "$ARCHIVE" -work "$WORK" >>"$ROWS"
fi

echo
echo "machine: $(nproc) cores, $(free -h | awk '/^Mem:/ {print $2}') RAM, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(go version | cut -d' ' -f3)"
echo "load: hey $HEY_VERSION, -c $CONC, $DURATION per ingest row, keep-alive, 127.0.0.1; both servers and hey share the machine"
echo
column -t -s $'\t' "$ROWS"
