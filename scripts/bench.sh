#!/usr/bin/env bash
# `make bench`: batond's HTTP throughput against a C libmicrohttpd baseline,
# and the ledger's group commit (32 writers against 1).
#
# Targets (a MISS is reported, not an error):
#   batond /healthz   >= 0.9x the C server
#   batond /v1/status >= 0.5x the C server
#   ledger appends/s with 32 writers >= 5x with 1 writer
#   pushing a 100 MiB release (bench/push.py) against cp, cp + sync and
#   sha256sum + cp + sync of the same file on the same disk: reported, no target
#   unpacking a 100 MB .tar.gz release (baton-bench unpack) against tar -xzf,
#   with and without sync: reported, no target
#   200 handoffs of baton-testagent (bench/handoffs.py): gap p50 < 0.2 ms and
#   p99 < 1 ms; batond's own work per handoff p50 < 5 ms (its overhead less the
#   agent's own start), with where the overhead goes
#   kill -9 of batond to /readyz with 100 agents re-adopted (bench/readopt.py):
#   p50 < 500 ms, against a cold start of the same agents
#   10 self-upgrades of batond under wrk load (bench/selfupgrade.py): 0 refused
#   or failed requests; the time from POST to the new image's READY=1 is reported
#   1,000 Server-Sent Events streams of /v1/events (bench/sse.py): batond's RSS
#   before and after, and the delay from a ledger append to the last stream
#   receiving it (p50, max over 20 appends): reported, no target
#   `baton status` on the Unix socket (bench/cli.py) against curl on the same
#   socket: median under 20 ms
#   the same HTTP agent (examples/http-agent) upgraded 20 times under ~1,000
#   requests/s by supervisord (`supervisorctl restart`) and by baton, without and
#   with socket hand-over, at agent start-up times of 0, 0.5 and 2 s
#   (bench/peers.py): failed requests per upgrade, unavailability window and the
#   upgrade command's time, side by side: reported, no target
#   100 simulated hosts (batond's fleet code over a model machine, one process)
#   converging on new versions through a real 3-member etcd cluster on loopback
#   (baton-bench fleet): time to converge for several canary/max-unavailable
#   settings against the serial minimum, and etcd requests per host per minute at
#   rest, against etcd's raw rate from the same client: reported, no target
#   load and starvation (bench/starve.py): 10,000 parked signal long-polls (5,000
#   registered instances, bench/pollers.c), 1,000 event streams, a slowloris at the
#   connection limit, 2 MiB bodies and wrk on /v1/status, one at a time and all at
#   once, while an agent hands over back to back: latency per scope (agent,
#   operator, probe), batond's RSS, wrk's rate against the C server's; target: no
#   agent misses a signal or hears it over 1 s late, no scope goes unserved
# The exit status is non-zero only when something failed to run or a
# measurement is invalid (non-2xx answers, a server that did not start).
#
# Environment:
#   BENCH_SECONDS=5          duration of each wrk run and each ledger run
#   BENCH_ROUNDS=3           HTTP rounds (C, then batond); medians are compared
#   BENCH_SKIP_BUILD=1       use the binaries as they are (no swift build)
#   BATOND=..., BATON_BENCH=...  binaries to measure (default .build/release/)
#   BENCH_PEERS_QUICK=1      bench/peers.py with 5 upgrades per run instead of 20
#   BENCH_FLEET_QUICK=1      baton-bench fleet with 20 hosts and a 10 s steady window
#                            instead of 100 hosts and 30 s
#   BENCH_STARVE_INSTANCES=5000, BENCH_STARVE_SECONDS=15  bench/starve.py's pollers
#                            (2 parked polls each) and seconds per phase
# Temp dirs (batond state, ledger dirs) follow TMPDIR: keep it on a real
# disk, the ledger numbers are about fsync.
#
# The servers run one after the other, never together: the machine has few
# cores and wrk needs one of them. Everything binds loopback only.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
batond=${BATOND:-.build/release/batond}
baton_bench=${BATON_BENCH:-.build/release/baton-bench}
config=config/dev.toml
out=bench/out

die() { echo "bench: error: $*" >&2; exit 1; }

[[ $duration =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer, got '$duration'"

# MARK: - Cleanup

tmp=$(mktemp -d "${TMPDIR:-/tmp}/baton-bench.XXXXXX")
server_pid=""
server_status=""

# stop_server: SIGTERM the running server and wait up to 30 s for it; its exit
# status goes to server_status. Past 30 s: SIGKILL, and return 1.
stop_server() {
    local pid=$server_pid
    [[ -n $pid ]] || return 0
    server_pid=""
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null; do
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench: pid $pid ignored SIGTERM for 30 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    local rc=0
    wait "$pid" 2>/dev/null || rc=$?
    server_status=$rc
    return 0
}

cleanup() {
    local rc=$?
    stop_server || true
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# MARK: - Helpers

# wait_for_file FILE PID WHAT: poll until FILE is non-empty; fail when PID
# dies first or after 30 s.
wait_for_file() {
    local file=$1 pid=$2 what=$3
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        [[ -s $file ]] && return 0
        kill -0 "$pid" 2>/dev/null || die "$what exited before it served (see above)"
        sleep 0.1
    done
    die "$what did not write $file within 30 s"
}

declare -A rps p99 ratio

# run_wrk NAME URL [HEADER]: run wrk, print its output, record req/s and p99.
run_wrk() {
    local name=$1 url=$2 header=${3:-}
    local hdr=()
    [[ -n $header ]] && hdr=(-H "$header")
    # A wrong token or route would benchmark error answers: check first.
    curl -fsS -o /dev/null "${hdr[@]}" "$url" || die "$name: $url does not answer 2xx"
    # One second of warm-up, discarded: page faults, lazy initialisation and
    # CPU frequency ramp-up would otherwise count against whoever runs first.
    wrk -t1 -c32 -d1s "${hdr[@]}" "$url" >/dev/null || die "$name: wrk failed"
    echo "== wrk $name ($url)"
    local log="$tmp/wrk.log"
    wrk -t1 -c32 "-d${duration}s" --latency "${hdr[@]}" "$url" | tee "$log" | sed 's/^/   /' \
        || die "$name: wrk failed"
    local bad
    bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$log")
    [[ -z $bad ]] || die "$name: $bad non-2xx answers during the run; numbers are invalid"
    rps[$name]+="$(awk '$1 == "Requests/sec:" {print $2}' "$log") "
    # wrk prints "99%  1.23ms" (or us, s); normalise to milliseconds.
    p99[$name]+="$(awk '$1 == "99%" {
            v = $2; u = v; sub(/^[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
            if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000
            printf "%.2f", v }' "$log") "
    [[ ${rps[$name]} =~ [0-9] && ${p99[$name]} =~ [0-9] ]] || die "$name: could not parse wrk's output"
}

# median VALUES...: the middle value (the lower middle for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ratio_of A B: A / B with two decimals, for display.
ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
# verdict A B MIN: PASS when A >= MIN x B (unrounded), else MISS.
verdict() {
    if awk -v a="$1" -v b="$2" -v m="$3" 'BEGIN { exit !(a >= m * b) }'; then echo PASS; else echo MISS; fi
}

# MARK: - Build

scripts/install-deps.sh --bench

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    # `--product` takes one value (a second one replaces the first): two builds,
    # the second reusing the first's modules.
    swift build -c release --product batond
    swift build -c release --product baton-bench
    swift build -c release --product baton-testagent
    swift build -c release --product baton
    swift build -c release --product http-agent
fi
[[ -x $batond ]] || die "$batond not found or not executable"
[[ -x $baton_bench ]] || die "$baton_bench not found or not executable"
[[ -f $config ]] || die "$config not found"

mkdir -p "$out"
# shellcheck disable=SC2046 # pkg-config's output is meant to be split
cc -O2 -Wall -Wextra -o "$out/mhd_fixed" bench/mhd_fixed.c $(pkg-config --cflags --libs libmicrohttpd)
cc -O2 -Wall -Wextra -o "$out/pollers" bench/pollers.c

# MARK: - HTTP: the C baseline

# Other load on the machine skews every number below: say how busy it is.
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Rounds alternate the C server and batond, so drift in the machine's speed
# (frequency, neighbours) touches both; medians damp single bad runs.
state="$tmp/state"
mkdir -m 0700 "$state"
for ((round = 1; round <= rounds; round++)); do
    echo "== round $round of $rounds: C baseline (bench/mhd_fixed.c)"
    "$out/mhd_fixed" >"$tmp/c.port" &
    server_pid=$!
    wait_for_file "$tmp/c.port" "$server_pid" "mhd_fixed"
    c_port=$(head -n1 "$tmp/c.port")
    run_wrk "C /healthz" "http://127.0.0.1:$c_port/healthz"
    stop_server || die "mhd_fixed did not stop on SIGTERM"
    rm -f "$tmp/c.port"

    echo "== round $round of $rounds: batond ($batond, state $state)"
    "$batond" --config "$config" --state-dir "$state" --socket "$state/batond.sock" \
        --listen 127.0.0.1:0 --log-level warning &
    server_pid=$!
    wait_for_file "$state/batond.addr" "$server_pid" "batond"
    addr=$(head -n1 "$state/batond.addr")
    [[ $addr == 127.0.0.1:* ]] || die "batond.addr holds '$addr', expected 127.0.0.1:PORT"
    [[ -s $state/operator.token ]] || die "batond serves but wrote no $state/operator.token"
    token=$(head -n1 "$state/operator.token")

    run_wrk "batond /healthz" "http://$addr/healthz"
    run_wrk "batond /v1/status" "http://$addr/v1/status" "Authorization: Bearer $token"

    stop_server || die "batond did not stop within 30 s of SIGTERM"
    [[ $server_status == 0 ]] || die "batond exited $server_status after SIGTERM (expected 0)"
    [[ ! -e $state/batond.addr ]] || die "batond left $state/batond.addr behind after a clean stop"
done

# MARK: - Ledger group commit

fs=$(stat -f -c %T "$tmp")
[[ $fs != tmpfs ]] || echo "bench: warning: $tmp is on tmpfs: fsync is free there, the ledger ratio means little" >&2

declare -A aps
for writers in 1 32; do
    dir=$(mktemp -d "$tmp/ledger.XXXXXX")
    echo "== baton-bench ledger --writers $writers ($fs)"
    log="$tmp/ledger.$writers.log"
    "$baton_bench" ledger --writers "$writers" --seconds "$duration" --dir "$dir" | tee "$log" | sed 's/^/   /' \
        || die "baton-bench ledger --writers $writers failed"
    aps[$writers]=$(awk -F= '$1 == "appends_per_second" {print $2; exit}' "$log")
    [[ -n ${aps[$writers]} ]] || die "baton-bench ledger --writers $writers printed no appends_per_second="
    rm -rf "$dir"
done

# MARK: - Report

declare -A all
for name in "C /healthz" "batond /healthz" "batond /v1/status"; do
    all[$name]=${rps[$name]}
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    rps[$name]=$(median ${rps[$name]})
    # shellcheck disable=SC2086
    p99[$name]=$(median ${p99[$name]})
done
c=${rps["C /healthz"]}
echo
echo "medians of $rounds rounds of ${duration}s (wrk -t1 -c32):"
printf '%-20s %12s %10s %8s   %s\n' target req/s p99 "vs C" "each round"
for name in "C /healthz" "batond /healthz" "batond /v1/status"; do
    ratio[$name]=$(ratio_of "${rps[$name]}" "$c")
    printf '%-20s %12s %8sms %7sx   %s\n' "$name" "${rps[$name]}" "${p99[$name]}" "${ratio[$name]}" "${all[$name]}"
done
echo

printf '%s  batond /healthz   >= 0.9x C  (%sx)\n' \
    "$(verdict "${rps["batond /healthz"]}" "$c" 0.9)" "${ratio["batond /healthz"]}"
printf '%s  batond /v1/status >= 0.5x C  (%sx)\n' \
    "$(verdict "${rps["batond /v1/status"]}" "$c" 0.5)" "${ratio["batond /v1/status"]}"

ledger_ratio=$(ratio_of "${aps[32]}" "${aps[1]}")
echo
printf 'ledger appends/s: 1 writer %s, 32 writers %s, ratio %sx\n' "${aps[1]}" "${aps[32]}" "$ledger_ratio"
printf '%s  ledger 32 writers >= 5x 1 writer  (%sx)\n' "$(verdict "${aps[32]}" "${aps[1]}" 5)" "$ledger_ratio"

# MARK: - Unpacking a release

echo
dir=$(mktemp -d "$tmp/unpack.XXXXXX")
echo "== baton-bench unpack --size-mb 100 ($fs): the release unpacker against tar -xzf, medians of 3"
"$baton_bench" unpack --size-mb 100 --dir "$dir/run" | sed 's/^/   /' || die "baton-bench unpack failed"
rm -rf "$dir"

# MARK: - Pushing a release

echo
echo "== a 100 MiB release pushed to batond against cp, cp + sync, sha256sum + cp + sync (bench/push.py)"
python3 bench/push.py "$batond" 100 3 | sed 's/^/   /' || die "the push benchmark failed"

# MARK: - Handoffs

echo
echo "== ${BENCH_HANDOFFS:-200} handoffs of baton-testagent (bench/handoffs.py)"
python3 bench/handoffs.py "$batond" .build/release/baton-testagent "${BENCH_HANDOFFS:-200}" \
    || die "the handoff benchmark failed"

# MARK: - Re-adoption after kill -9

echo
echo "== kill -9 of batond, restart, re-adoption of ${BENCH_AGENTS:-100} agents (bench/readopt.py)"
python3 bench/readopt.py "$batond" .build/release/baton-testagent "${BENCH_AGENTS:-100}" "${BENCH_READOPT_ROUNDS:-5}" \
    || die "the re-adoption benchmark failed"
# MARK: - Self-upgrade

echo
echo "== ${BENCH_SELF_UPGRADES:-10} self-upgrades of batond under load (bench/selfupgrade.py)"
python3 bench/selfupgrade.py "$batond" "${BENCH_SELF_UPGRADES:-10}" \
    || die "the self-upgrade benchmark failed"

# MARK: - Event streams

echo
echo "== ${BENCH_STREAMS:-1000} Server-Sent Events streams of /v1/events, 20 appends (bench/sse.py)"
python3 bench/sse.py "$batond" "${BENCH_STREAMS:-1000}" 20 | sed 's/^/   /' \
    || die "the event stream benchmark failed"

# MARK: - The operator's command line

echo
echo "== baton status against curl on batond's Unix socket, 100 runs each (bench/cli.py)"
python3 bench/cli.py "$batond" "$(dirname "$batond")/baton" 100 | sed 's/^/   /' \
    || die "the CLI benchmark failed"

# MARK: - Peers: supervisord against baton

echo
echo "== the same HTTP agent upgraded under load: supervisord against baton (bench/peers.py)"
peers_quick=()
[[ ${BENCH_PEERS_QUICK:-0} == 1 ]] && peers_quick=(--quick)
python3 bench/peers.py --batond "$batond" --baton "$(dirname "$batond")/baton" --agent "$(dirname "$batond")/http-agent" \
    --supervisor-bin .build-bench-venv/bin "${peers_quick[@]}" | sed 's/^/   /' \
    || die "the peer benchmark failed"

# MARK: - Fleet simulation

echo
fleet_hosts=100 fleet_steady=30
[[ ${BENCH_FLEET_QUICK:-0} == 1 ]] && fleet_hosts=20 fleet_steady=10
echo "== $fleet_hosts simulated hosts converge through batond's fleet code on 3 etcd members (baton-bench fleet)"
"$baton_bench" fleet --hosts "$fleet_hosts" --steady-seconds "$fleet_steady" | sed 's/^/   /' \
    || die "the fleet simulation failed"

# MARK: - Load and starvation

echo
echo "== load and starvation: parked polls, streams, slowloris, 2 MiB bodies, wrk, while an agent hands over (bench/starve.py)"
python3 bench/starve.py "$batond" "$(dirname "$batond")/baton-testagent" "$out/pollers" "$out/mhd_fixed" \
    --instances "${BENCH_STARVE_INSTANCES:-5000}" --seconds "${BENCH_STARVE_SECONDS:-15}" | sed 's/^/   /' \
    || die "the load and starvation benchmark failed"
