#!/usr/bin/env bash
# Property-based contract test: schemathesis (pinned in scripts/requirements-test.txt,
# installed into .build-venv/ by scripts/install-deps.sh) generates requests from
# api/openapi.yaml and sends them to a real batond, which must answer every one
# without a 5xx it does not document and exactly as the spec says: documented
# status codes, content types, headers and response schemas.
#
# batond (.build/debug/batond, built by `make test`) runs on a temporary state
# directory with a port-0 loopback TCP listener, short long-poll waits (max_wait
# 1s) and the agent the spec's examples name, machine-0, with the releases they
# name, 1.4.2 (current) and 1.4.3 (examples/shell-agent), so that examples reach
# real handoffs. Two runs: the instance routes with the token of machine-0's running
# instance, then every other route with the operator token.
#
# Checks: all that schemathesis has (--checks all): no undocumented 5xx; status
# codes, content types, headers and bodies as documented; data the schema forbids
# refused with a 4xx and data it allows accepted (or refused for the machine's
# state: 404, 409); required headers and authentication really required; 405 for
# undocumented methods. The stateful phase follows the spec's OpenAPI links (an agent
# listed -> its releases -> one release -> deleted -> asked again; a desired version ->
# the agent and its handoffs; ...) and adds the stateful checks: use_after_free (what
# was deleted answers 404), ensure_resource_availability, object_level_authorization.
# Left out of the operations: POST /v1/agents/{name}/instances. It registers an
# existing process by pid, and a registered process is signalled by batond (stop,
# SIGTERM, SIGKILL), so generated pids would have batond signal unrelated processes
# of the machine that runs the tests. Its body rules are tested in
# Tests/BatondTests/RequestBodyTests.swift instead.
#
# usage: scripts/schemathesis.sh [MAX_EXAMPLES]   (default 250 per operation and phase)
# SCHEMATHESIS_SEED picks another seed than the fixed default (6), to explore.
# Exits non-zero when schemathesis finds a failure, or when batond does not stop
# cleanly after the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
max_examples=${1:-250}
schemathesis=.build-venv/bin/schemathesis
batond=.build/debug/batond
[[ -x $schemathesis ]] || { echo "schemathesis.sh: $schemathesis is missing; run scripts/install-deps.sh" >&2; exit 1; }
[[ -x $batond ]] || { echo "schemathesis.sh: $batond is missing; run swift build first" >&2; exit 1; }

state=$(mktemp -d "${TMPDIR:-/tmp}/baton-schemathesis.XXXXXX")
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$state"
}
trap cleanup EXIT

# Fleet mode, when etcd is installed (make test installs it): one etcd member on free
# loopback ports, its data under the state directory, so that the fleet routes answer
# from a real etcd rather than 404 fleet_off.
fleet_config=
etcd_pid=
if command -v etcd >/dev/null; then
    read -r client_port peer_port < <(python3 -c 'import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in sockets])')
    etcd --name schemathesis --data-dir "$state/etcd" \
        --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "schemathesis=http://127.0.0.1:$peer_port" --log-outputs "$state/etcd.log" --logger zap \
        >/dev/null 2>&1 &
    etcd_pid=$!
    fleet_config="[fleet]
endpoints = [\"http://127.0.0.1:$client_port\"]
host = \"schemathesis\"
lease_ttl = \"3s\""
fi
stop_etcd() {
    if [[ -n $etcd_pid ]]; then kill -KILL "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
}
trap 'stop_etcd; cleanup' EXIT

releases="$state/releases/machine-0"
for version in 1.4.2 1.4.3; do
    mkdir -p "$releases/$version/bin"
    install -m 0755 examples/shell-agent "$releases/$version/bin/shell-agent"
done
ln -s 1.4.2 "$releases/current"
cat >"$state/batond.toml" <<'EOF'
# Its agents stop with it: nothing is left running after the contract test.
[daemon]
stop_agents_on_exit = true

[http]
max_wait = "1s"

[agents.machine-0]
command = ["{release}/bin/shell-agent"]
ready_timeout = "10s"
stop_timeout = "2s"
kill_timeout = "1s"
EOF
if [[ -n $fleet_config ]]; then printf '\n%s\n' "$fleet_config" >>"$state/batond.toml"; fi

"$batond" --config "$state/batond.toml" --state-dir "$state" --listen 127.0.0.1:0 --log-level warning \
    2>"$state/batond.log" &
pid=$!
# batond writes batond.addr once its listeners are up; 30 s at most.
for _ in $(seq 300); do
    [[ -s $state/batond.addr ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$state/batond.log" >&2; echo "schemathesis.sh: batond exited" >&2; exit 1; }
    sleep 0.1
done
[[ -s $state/batond.addr ]] || { echo "schemathesis.sh: batond did not write $state/batond.addr" >&2; exit 1; }
address=$(tr -d '\n' <"$state/batond.addr")
token=$(tr -d '\n' <"$state/operator.token")

# The instance routes need the instance's own token: the one batond gave the agent's
# running instance in its environment (BATON_TOKEN), read from /proc as `ps e` does.
# instance_credentials [NOT]: sets $instance and $instance_token to machine-0's working
# instance (another than NOT): the token from its environment.
instance_credentials() {
    local not=${1:-} view instance_pid
    instance= instance_token=
    for _ in $(seq 300); do
        view=$(curl -sf -H "Authorization: Bearer $token" "http://$address/v1/agents/machine-0" || true)
        read -r instance instance_pid < <(python3 -c 'import json, sys
instances = [i for i in json.loads(sys.stdin.read() or "{}").get("instances") or [] if i.get("state") == "working"] or [{}]
print(instances[0].get("id", ""), instances[0].get("pid", ""))' <<<"$view") || true
        if [[ -n $instance && $instance != "$not" && -r /proc/$instance_pid/environ ]]; then
            instance_token=$(tr '\0' '\n' <"/proc/$instance_pid/environ" | sed -n 's/^BATON_TOKEN=//p')
            [[ -n $instance_token ]] && return 0
        fi
        sleep 0.1
    done
    cat "$state/batond.log" >&2
    echo "schemathesis.sh: machine-0 has no working instance${not:+ but $not}" >&2
    exit 1
}
# instance_config: the config of a run as $instance.
instance_config() {
    cat >"$state/instance.toml" <<EOF
headers = { Authorization = "Bearer $instance_token" }
[cache]
enabled = false
[parameters]
"path.id" = "$instance"
EOF
}
instance_credentials
# Three runs, each with its credentials; no cache of past runs in the work tree.
# A schema cannot say that Content-Digest must be the body's own SHA-256: a binary
# generated from the schema is refused 422 digest_mismatch, rightly. A release push
# also needs one of Content-Digest and ?sha256= (400 without either: a schema cannot
# require one of two parameters) and bytes that are an executable or a tar archive
# (415 otherwise); a fetch's URL must be one libcurl parses as http or https with a
# host (422 invalid_url), which the schema's pattern only approximates. A desired
# version's url and sha256 are for agents batond does not start (external = true);
# the schema cannot say which agents those are (422 not_external otherwise). A fleet
# plan needs a source (URL and digest) for every agent it names, given or stored on
# the machine (422 invalid_plan otherwise); a rollback needs a previous plan, and an
# exclusion a plan (404 no_plan otherwise): a schema cannot say either.
cat >"$state/operator.toml" <<EOF
headers = { Authorization = "Bearer $token" }
[cache]
enabled = false
[[operations]]
include-operation-id = "putDaemonBinary"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
[[operations]]
include-operation-id = "pushRelease"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "415", "422", "429", "5xx"]
[[operations]]
include-operation-id = "setDesired"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
[[operations]]
include-operation-id = "fetchRelease"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
[[operations]]
include-operation-id = "setFleet"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
[[operations]]
include-operation-id = "rollbackFleet"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
[[operations]]
include-operation-id = "excludeFromFleet"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
EOF
instance_config

# run NAME CONFIG ARGS...: one schemathesis run (every phase unless ARGS say --phases).
# Every run happens; the first failure sets the exit status.
status=0
total_started=$(date +%s)
run() {
    local name=$1 config=$2 started code=0 phases=(--phases examples,coverage,fuzzing,stateful)
    shift 2
    [[ " $* " == *" --phases "* ]] && phases=()
    started=$(date +%s)
    # One worker: with two, hypothesis 6.170 on Python 3.11 sometimes fails inside
    # (AST constructor recursion depth mismatch), a race in CPython's ast module.
    "$schemathesis" --config-file "$config" run api/openapi.yaml \
        --url "http://$address" \
        --checks all \
        "${phases[@]}" \
        --max-examples "$max_examples" \
        --request-timeout 30 \
        --generation-database none \
        --seed "${SCHEMATHESIS_SEED:-6}" \
        --workers 1 \
        --no-color \
        --output-sanitize true \
        "$@" 2>&1 | tee "$state/run.log" || code=$?
    echo "schemathesis.sh: $name: schemathesis exited $code after $(( $(date +%s) - started )) s"
    (( status != 0 )) || status=$code
    # Its summary: "N generated, N passed[, N skipped]" or "N generated, N found M unique failures".
    local generated failed
    generated=$(sed -n 's/^ *\([0-9][0-9]*\) generated,.*/\1/p' "$state/run.log" | tail -1)
    failed=$(sed -n 's/.* found \([0-9][0-9]*\) unique failure.*/\1/p' "$state/run.log" | tail -1)
    cases=$(( cases + ${generated:-0} ))
    failures=$(( failures + ${failed:-0} + (code != 0 && ${failed:-0} == 0) ))
}
cases=0 failures=0
# First as the instance, on its own routes (its reports may end it: later requests then
# get 401 or 404, which the spec documents); then as the operator, on the others.
# The instance's reports end it (stopped, failed), so its stateful phase, which follows
# the links between its routes, runs apart, as the next instance batond starts.
run "instance $instance" "$state/instance.toml" --include-tag instances --exclude-operation-id registerInstance \
    --phases examples,coverage,fuzzing
instance_credentials "$instance"
instance_config
run "instance $instance (stateful)" "$state/instance.toml" --include-tag instances --exclude-operation-id registerInstance \
    --phases stateful
run operator "$state/operator.toml" --exclude-tag instances --exclude-operation-id registerInstance
echo "schemathesis.sh: the three runs took $(( $(date +%s) - total_started )) s"

kill -TERM "$pid"
if wait "$pid"; then stopped=0; else stopped=$?; fi
pid=
if (( stopped != 0 )); then
    echo "schemathesis.sh: batond exited $stopped after SIGTERM; its log:" >&2
    cat "$state/batond.log" >&2
    status=1
fi
# The closing line test runners print: test cases run, failures found.
echo "schemathesis: $(( cases - failures )) passed, $failures failed"
exit "$status"
