#!/usr/bin/env bash
# One command, one run, one table: how the real `receiver serve` binary keeps
# up against baselines measured on the same machine in the same run.
#
#   bash bench/run.sh
#
# Knobs (environment): BENCH_DURATION (each ingest load, default 10s),
# BENCH_CONCURRENCY (hey workers, default 16), BENCH_ROUNDS (ingest rounds,
# default 3), BENCH_ARCHIVE_BYTES (export size, default 1 GiB),
# BENCH_SKIP_PIPELINE=1 (ingest only).
# Everything listens on 127.0.0.1 and every load is bounded in time.
#
# Ingest rounds interleave the servers (bare, receiver, bare, receiver, ...):
# each ratio is of two neighbouring runs, so a neighbour's build slows both.
# The table gives the median over the rounds and, in brackets, the lowest and
# highest; stderr has every run.
set -euo pipefail
cd "$(dirname "$0")/.."

HEY_VERSION=v0.1.4
DURATION=${BENCH_DURATION:-10s}
CONC=${BENCH_CONCURRENCY:-16}
ROUNDS=${BENCH_ROUNDS:-3}
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

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "building (load average $LOAD_BEFORE)" >&2
go build -trimpath -o "$WORK/receiver" ./cmd/receiver
go build -trimpath -o "$WORK/bare" ./bench/cmd/bare
go build -trimpath -o "$WORK/drain" ./bench/cmd/drain
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

# cpu_ticks PID: user+system CPU time of PID so far, in clock ticks (the
# fields after the command name, which is in parentheses).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TICK_US=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN {print 1000000 / hz}')

# load NAME URL BODY PID...: bounded hey run against the server; sets RPS
# P50_MS P99_MS BAD (non-2xx or errors) CPU_US (CPU time of the PIDs, the
# server and its helpers, per answered request).
load() {
  local name=$1 url=$2 body=$3 sig out t0=0 t1=0 ok p
  shift 3
  out="$WORK/${name//\//-}.hey"
  sig=$("$WORK/receiver" sign --secret "$SECRET" "$body")
  # warm-up, then the measured run
  "$HEY" -z 1s -c "$CONC" -m POST -T application/json -H "X-Signature-256: $sig" -D "$body" "$url" >/dev/null
  for p in "$@"; do t0=$((t0 + $(cpu_ticks "$p"))); done
  "$HEY" -z "$DURATION" -c "$CONC" -m POST -T application/json -H "X-Signature-256: $sig" -D "$body" "$url" >"$out"
  for p in "$@"; do t1=$((t1 + $(cpu_ticks "$p"))); done
  RPS=$(awk '/Requests\/sec:/ {printf "%.0f", $2}' "$out")
  P50_MS=$(awk '/ 50% in / {printf "%.2f", $3*1000}' "$out")
  P99_MS=$(awk '/ 99% in / {printf "%.2f", $3*1000}' "$out")
  ok=$(awk '/^[ \t]*\[[0-9]+\]/ { code=substr($1,2,3); if (code ~ /^2/) n+=$2 } END {print n+0}' "$out")
  BAD=$(awk '/^[ \t]*\[[0-9]+\]/ { code=substr($1,2,3); if (code !~ /^2/) n+=$2 } END {print n+0}' "$out")
  BAD=$((BAD + $(awk '/^Error distribution:/ {e=1; next} e && /\[[0-9]+\]/ {gsub(/[\[\]]/,"",$1); n+=$1} END {print n+0}' "$out")))
  CPU_US=$(awk -v t=$((t1 - t0)) -v us="$TICK_US" -v n="$ok" 'BEGIN { if (n == 0) print "n/a"; else printf "%.1f", t*us/n }')
  printf '  %-24s %8s req/s  p50 %6s ms  p99 %6s ms  CPU %6s us/req  non-2xx/errors %s\n' "$name" "$RPS" "$P50_MS" "$P99_MS" "$CPU_US" "$BAD" >&2
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2fx", a/b }'; }
cmp_ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
yes_no() { if "$@"; then echo yes; else echo NO; fi; }
# median X...: the median; spread X...: "(lowest-highest)".
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else printf "%g\n", (a[NR/2]+a[NR/2+1])/2 }'; }
spread() { printf '%s\n' "$@" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "(%s-%s)", lo, hi}'; }

# start_receiver NAME: the receiver on its embedded default, with a fresh
# data directory (the embedded Pub/Sub starts empty); sets ADDR, PID, DATA.
start_receiver() {
  DATA="$WORK/data-$1"
  start "$1" env -i PATH="$PATH" HOME="$HOME" CVAT_SYNC_WEBHOOK_SECRET="$SECRET" \
    CVAT_SYNC_LISTEN=127.0.0.1:0 CVAT_SYNC_DATA_DIR="$DATA" \
    "$WORK/receiver" serve
}

# Figures of each server kind ("bare", "receiver", "drained"), one value
# per round, space-separated: word splitting hands them to median/spread.
declare -A RPS_OF P50_OF P99_OF CPU_OF HWM_OF RATIO_OF BAD_OF

# record KIND PID: appends the last load's figures to KIND's.
record() {
  RPS_OF[$1]+=" $RPS" P50_OF[$1]+=" $P50_MS" P99_OF[$1]+=" $P99_MS" CPU_OF[$1]+=" $CPU_US"
  HWM_OF[$1]+=" $(hwm_mib "$2")" BAD_OF[$1]=$((${BAD_OF[$1]:-0} + BAD))
}

# report EV KIND TARGET: the rows of one ingest measure against bare.
# shellcheck disable=SC2086 # the figures are meant to be split
report() {
  local ev=$1 k=$2 target=$3 r holds p99 label="ingest $1"
  [ "$k" = receiver ] || label="ingest $1 ($k)"
  r=$(median ${RATIO_OF[$k]})
  holds=$(yes_no cmp_ge "$r" "$target")
  if [ "${BAD_OF[bare]}" != 0 ] || [ "${BAD_OF[$k]}" != 0 ]; then holds="NO (errors: bare ${BAD_OF[bare]}, $k ${BAD_OF[$k]})"; fi
  row "$label req/s" "$(median ${RPS_OF[$k]})" "$(median ${RPS_OF[bare]})" "${r}x $(spread ${RATIO_OF[$k]})" ">= ${target}x" "$holds"
  row "$label p50 ms" "$(median ${P50_OF[$k]})" "$(median ${P50_OF[bare]})" "$(ratio "$(median ${P50_OF[$k]})" "$(median ${P50_OF[bare]})")" "" ""
  p99=$(median ${P99_OF[$k]})
  if [ "$ev" = update_job ]; then
    row "$label p99 ms" "$p99 $(spread ${P99_OF[$k]})" "$(median ${P99_OF[bare]})" "$(ratio "$p99" "$(median ${P99_OF[bare]})")" "< 20 ms" "$(yes_no cmp_ge 20 "$p99")"
  else
    row "$label p99 ms" "$p99 $(spread ${P99_OF[$k]})" "$(median ${P99_OF[bare]})" "$(ratio "$p99" "$(median ${P99_OF[bare]})")" "" ""
  fi
  row "$label CPU us/req" "$(median ${CPU_OF[$k]})" "$(median ${CPU_OF[bare]})" "$(ratio "$(median ${CPU_OF[$k]})" "$(median ${CPU_OF[bare]})")" "" ""
  row "$label peak RSS MiB" "$(median ${HWM_OF[$k]})" "$(median ${HWM_OF[bare]})" "$(ratio "$(median ${HWM_OF[$k]})" "$(median ${HWM_OF[bare]})")" "" ""
}

# Rounds: bare, receiver (and, for update_job, the receiver with its inbox
# drained by bench/cmd/drain), bare, receiver, ... The drained row's CPU is
# the receiver's and the drain's.
echo "ingest: $ROUNDS rounds of hey -z $DURATION -c $CONC per server, interleaved, keep-alive, 127.0.0.1" >&2
for ev in ping update_job; do
  body=testdata/payloads/$ev.json
  kinds=(receiver)
  [ "$ev" = update_job ] && kinds+=(drained)
  RPS_OF=() P50_OF=() P99_OF=() CPU_OF=() HWM_OF=() RATIO_OF=() BAD_OF=()
  for round in $(seq 1 "$ROUNDS"); do
    start bare "$WORK/bare" -listen 127.0.0.1:0 -secret "$SECRET"
    load "bare/$ev#$round" "http://$ADDR/webhooks/cvat" "$body" "$PID"
    record bare "$PID"
    b_rps=$RPS
    stop "$PID"

    for k in "${kinds[@]}"; do
      start_receiver "$k-$ev-$round"
      rpid=$PID raddr=$ADDR dpid=""
      if [ "$k" = drained ]; then
        start "drain-$ev-$round" "$WORK/drain" -data "$DATA"
        dpid=$PID
      fi
      # shellcheck disable=SC2086 # dpid is empty or one pid
      load "$k/$ev#$round" "http://$raddr/webhooks/cvat" "$body" "$rpid" $dpid
      record "$k" "$rpid"
      RATIO_OF[$k]+=" $(awk -v a="$RPS" -v b="$b_rps" 'BEGIN { printf "%.2f", (b == 0 ? 0 : a/b) }')"
      [ -z "$dpid" ] || stop "$dpid"
      stop "$rpid"
    done
  done

  if [ "$ev" = ping ]; then target=0.8; else target=0.3; fi
  for k in "${kinds[@]}"; do report "$ev" "$k" "$target"; done
done

if [ "${BENCH_SKIP_PIPELINE:-0}" != 1 ]; then
  echo "pipeline: export of a $ARCHIVE-byte archive, coalescing bursts" >&2
  "$WORK/pipebench" -receiver "$WORK/receiver" -archive-bytes "$ARCHIVE" -work "$WORK" >>"$ROWS"
fi

echo
echo "machine: $(nproc) cores, $(free -h | awk '/^Mem:/ {print $2}') RAM, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(go version | cut -d' ' -f3)"
echo "load: hey $HEY_VERSION, -c $CONC, $ROUNDS interleaved rounds of $DURATION per server, keep-alive, 127.0.0.1; both servers and hey share the machine; load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
column -t -s $'\t' "$ROWS"
