# Used by scripts/demo.sh (sourced, not run): a work
# directory and background processes cleaned up on exit, a local broker
# (pulsar-lite behind the fix-up proxy pulsar-rs needs), and waiting for an
# ingester to catch up, read from its metrics. Expects the repository root
# as the working directory and the release binaries built.

pids=()
# Set by `start_work`; removed on exit.
work=

# Kills what was started in the background, runs the script's own
# `cleanup_extra` (if it defines one), removes the work directory.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if declare -F cleanup_extra >/dev/null; then cleanup_extra; fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# start_work NAME: a fresh temporary directory in $work.
start_work() { work=$(mktemp -d "/tmp/lookout-$1.XXXXXX"); }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

# Seconds since the epoch, with fractions; `seconds_since T0` formats the
# time since T0 with two decimals.
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# start_broker BROKER_PORT PROXY_PORT: pulsar-lite and the proxy in front of
# it, logs and data in $work; sets PULSAR_URL (the proxy's).
start_broker() {
  local bport=$1 pport=$2
  # Its metrics endpoint would bind 0.0.0.0:8080; keep everything on loopback.
  printf '[metrics]\nenabled = false\n' >"$work/pulsar-lite.toml"
  (cd "$work" && exec pulsar-lite --config "$work/pulsar-lite.toml" --addr "127.0.0.1:$bport" --db-path "$work/broker") >"$work/broker.log" 2>&1 &
  pids+=($!)
  wait_port "$bport"
  target/release/pulsar-proxy --listen "127.0.0.1:$pport" --broker "127.0.0.1:$bport" >"$work/proxy.log" 2>&1 &
  pids+=($!)
  wait_port "$pport"
  PULSAR_URL="pulsar://127.0.0.1:$pport"
}

# metric TEXT NAME: NAME's value in a /metrics scrape (empty if absent).
metric() { awk -v m="$2" '$1 == m { print $2 }' <<<"$1"; }

# wait_caught_up PORT MESSAGES TRIES INTERVAL [CHECK...]: polls the ingester
# whose metrics are on PORT until it has received (or skipped as
# redeliveries) MESSAGES messages with none in flight and the command CHECK,
# if given, succeeds; gives up after TRIES polls. Leaves the counts in
# $received and $skipped (whole numbers).
wait_caught_up() {
  local port=$1 messages=$2 tries=$3 interval=$4 m inflight
  shift 4
  for _ in $(seq 1 "$tries"); do
    m=$(curl -s "http://127.0.0.1:$port/metrics" || true)
    received=$(metric "$m" lookout_ingester_messages_received_total); received=${received:-0}; received=${received%.*}
    skipped=$(metric "$m" lookout_ingester_duplicates_skipped_total); skipped=${skipped:-0}; skipped=${skipped%.*}
    inflight=$(metric "$m" lookout_ingester_messages_in_flight); inflight=${inflight:-1}
    if [ "$((received + skipped))" -ge "$messages" ] && [ "${inflight%.*}" = 0 ] && { [ $# = 0 ] || "$@"; }; then
      return 0
    fi
    sleep "$interval"
  done
  return 1
}
