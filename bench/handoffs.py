#!/usr/bin/env python3
"""`make bench` part 3: N handoffs of baton-testagent in parallel mode.

usage: bench/handoffs.py BATOND TESTAGENT [COUNT]

Starts batond on a fresh state directory with agent `bench` whose releases `a` and
`b` both run baton-testagent, then hands the agent over COUNT times, alternating.
Prints, over the committed handoffs:
  - the gap as batond measures it (old instance gone -> successor told go),
  - the gap as the agents saw it (old agent's `stopped` -> new agent's `go`, both
    from the agents' own event file, CLOCK_MONOTONIC),
  - batond's overhead per handoff: the handoff's whole time (began -> ended) minus
    the agents' own time (the successor's start -> ready, the old one's stop ->
    stopped),
each as p50 / p99 / max, and PASS/MISS against the targets. Then where the
overhead goes, per handoff, on one timeline (the ledger's and the handoff's
millisecond times, the agents' CLOCK_MONOTONIC times moved onto the wall clock):
  - spawn: began -> the successor's first line (`started`), less the agent's own
    start (exec of its script and binary, its runtime, up to `started`), which is
    measured alone beforehand, spawned the way batond does;
  - the ready report -> the old agent hearing stop (report, records, waking its
    long-poll), the gap, and go -> ended (the commit's records, the flip, the end);
  - the ledger's fdatasyncs per handoff, from batond's metrics;
and batond's own work: the overhead less the agent's own start.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime


def percentile(values, p):
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def millis(text):
    return datetime.strptime(text + "+0000", "%Y-%m-%dT%H:%M:%S.%fZ%z").timestamp() * 1000


def wall_minus_monotonic_ms():
    """The wall clock less CLOCK_MONOTONIC, in ms: the smallest of a few samples' bracket."""
    best = None
    for _ in range(50):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, (wall - (before + after) // 2) / 1e6)
    return best[1]


def agent_start_alone(script, events, count=20):
    """The agent's own start, spawned as batond spawns it (its release's script, the BATON_*
    variables set) but with no batond: from just before the spawn to its `started` line.
    Includes the exec of the script and the agent and the agent's runtime start."""
    times = []
    environment = dict(os.environ, BATON_SOCKET="/nonexistent/baton.sock", BATON_AGENT="bench",
                       BATON_TOKEN="probe", BATON_VERSION="a")
    for number in range(count):
        instance = f"probe.{number}"
        environment["BATON_INSTANCE"] = instance
        before = time.monotonic_ns()
        child = subprocess.Popen([script], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        started = None
        deadline = time.time() + 10
        while started is None and time.time() < deadline:
            for line in open(events) if os.path.exists(events) else []:
                parts = line.split()
                if len(parts) == 4 and parts[0] == "started" and parts[1] == instance:
                    started = int(parts[3])
            time.sleep(0.002)
        child.kill()
        child.wait()
        if started is not None:
            times.append((started - before) / 1e6)
    return times


def metrics(call_text):
    values = {}
    for line in call_text("/metrics").splitlines():
        match = re.match(r"^(baton_ledger_(?:fsync_seconds_sum|fsync_seconds_count|appends_total))\s+([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def main():
    batond, testagent = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    state = tempfile.mkdtemp(prefix="baton-bench-handoffs.")
    events = os.path.join(state, "events.log")
    for release in ("a", "b"):
        bin_dir = os.path.join(state, "releases", "bench", release, "bin")
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, "agent"), "w") as script:
            script.write(f"#!/bin/sh\nexec '{testagent}' --events '{events}'\n")
        os.chmod(os.path.join(bin_dir, "agent"), 0o755)
    os.symlink("a", os.path.join(state, "releases", "bench", "current"))
    probe_events = os.path.join(state, "probe-events.log")
    probe_script = os.path.join(state, "probe-agent")
    with open(probe_script, "w") as script:
        script.write(f"#!/bin/sh\nexec '{testagent}' --events '{probe_events}'\n")
    os.chmod(probe_script, 0o755)
    alone = agent_start_alone(probe_script, probe_events)
    config = os.path.join(state, "batond.toml")
    with open(config, "w") as handle:
        handle.write('[agents.bench]\ncommand = ["{release}/bin/agent"]\nready_timeout = "10s"\n'
                     'stop_timeout = "5s"\nkill_timeout = "2s"\n'
                     # Agents outlive batond by default: the last instance must not.
                     '\n[daemon]\nstop_agents_on_exit = true\n')
    daemon = subprocess.Popen([batond, "--config", config, "--state-dir", state, "--socket", state + "/batond.sock",
                               "--listen", "127.0.0.1:0", "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not os.path.exists(state + "/batond.addr"):
            if time.time() > deadline or daemon.poll() is not None:
                sys.exit("bench: batond did not start")
            time.sleep(0.05)
        base = "http://" + open(state + "/batond.addr").read().strip()
        token = open(state + "/operator.token").read().strip()

        def call(method, path, body=None, timeout=40):
            request = urllib.request.Request(base + path, method=method,
                                             data=None if body is None else json.dumps(body).encode())
            request.add_header("Authorization", f"Bearer {token}")
            if body is not None:
                request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())

        def call_text(path):
            request = urllib.request.Request(base + path)
            request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=40) as response:
                return response.read().decode()

        # Wait for the first instance to work.
        deadline = time.time() + 30
        while call("GET", "/v1/agents/bench")["state"] != "running":
            if time.time() > deadline:
                sys.exit("bench: the agent did not start")
            time.sleep(0.05)

        cursor = call("GET", "/v1/status")["ledger"]["last_seq"]
        ledger_before = metrics(call_text)
        records = []
        handoffs = []
        for number in range(count):
            target = "b" if number % 2 == 0 else "a"
            began = call("PUT", "/v1/agents/bench/desired", {"version": target})
            ended = False
            while not ended:
                page = call("GET", f"/v1/events?since={cursor}&wait=30")
                cursor = page["last_seq"]
                records += page["records"]
                ended = any(r["kind"] == "handoff.ended" and r["data"]["handoff"] == began["id"] for r in page["records"])
            handoffs.append(call("GET", f"/v1/handoffs/{began['id']}"))
        ledger_after = metrics(call_text)
        # Let the last successor hear its go before reading the agents' file.
        time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)

    offset = wall_minus_monotonic_ms()

    def wall(ns):
        return ns / 1e6 + offset

    spawned_at = {r["data"]["instance"]: millis(r["time"]) for r in records if r["kind"] == "instance.spawned"}
    ready_at = {r["data"]["instance"]: millis(r["time"]) for r in records if r["kind"] == "instance.ready"}
    lines = [line.split() for line in open(events) if line.strip()]
    first = {}
    for event, instance, version, ns in lines:
        first.setdefault((event, instance), int(ns))
    committed = [h for h in handoffs if h["outcome"] == "committed"]
    # Instances in spawn order: handoff k hands instance k+1 over to instance k+2.
    order = []
    for event, instance, _, _ in lines:
        if event == "started" and instance not in order:
            order.append(instance)
    order.sort(key=lambda i: int(i.split(".")[1]))
    batond_gaps, agent_gaps, overheads = [], [], []
    parts = {"spawn": [], "fork": [], "after_spawned": [], "ready_to_stop": [], "report": [], "gap": [], "go_to_end": []}
    for index, handoff in enumerate(handoffs):
        if handoff["outcome"] != "committed" or index + 1 >= len(order):
            continue
        old, new = order[index], order[index + 1]
        batond_gaps.append(handoff["gap_ms"])
        if ("stopped", old) in first and ("go", new) in first:
            agent_gaps.append((first[("go", new)] - first[("stopped", old)]) / 1e6)
        total = millis(handoff["ended_at"]) - millis(handoff["started_at"])
        own = 0.0
        if ("started", new) in first and ("ready", new) in first:
            own += (first[("ready", new)] - first[("started", new)]) / 1e6
        if ("stop-received", old) in first and ("stopped", old) in first:
            own += (first[("stopped", old)] - first[("stop-received", old)]) / 1e6
        overheads.append(total - own)
        needed = [("started", new), ("ready", new), ("go", new), ("stop-received", old), ("stopped", old)]
        if all(key in first for key in needed):
            began_ms, ended_ms = millis(handoff["started_at"]), millis(handoff["ended_at"])
            parts["spawn"].append(wall(first[("started", new)]) - began_ms)
            if new in spawned_at:
                parts["fork"].append(spawned_at[new] - began_ms)
                parts["after_spawned"].append(wall(first[("started", new)]) - spawned_at[new])
            parts["ready_to_stop"].append((first[("stop-received", old)] - first[("ready", new)]) / 1e6)
            if new in ready_at:
                parts["report"].append(ready_at[new] - wall(first[("ready", new)]))
            parts["gap"].append((first[("go", new)] - first[("stopped", old)]) / 1e6)
            parts["go_to_end"].append(ended_ms - wall(first[("go", new)]))
    shutil.rmtree(state, ignore_errors=True)

    print(f"handoffs: {len(handoffs)}, committed: {len(committed)}")
    if not batond_gaps:
        sys.exit("bench: no committed handoff to measure")

    def row(name, values):
        print(f"{name:<34} p50 {percentile(values, 50):8.3f} ms   p99 {percentile(values, 99):8.3f} ms   "
              f"max {max(values):8.3f} ms   (n={len(values)})")

    row("gap, batond's view", batond_gaps)
    row("gap, agents' view (stopped->go)", agent_gaps)
    row("batond overhead per handoff", overheads)
    start_alone = statistics.median(alone) if alone else 0.0
    own_work = [overhead - start_alone for overhead in overheads]
    row("batond's own work per handoff", own_work)

    # Where the overhead goes. Ledger and handoff times have millisecond resolution, so
    # the parts are means over the handoffs (their rounding evens out), beside p50s.
    print("where the overhead goes, per handoff (mean, p50; ms):")

    def part(name, values, less=0.0):
        if values:
            adjusted = [v - less for v in values]
            print(f"  {name:<60} {statistics.mean(adjusted):7.3f} {percentile(adjusted, 50):7.3f}")

    if alone:
        print(f"  {'the agent starting, alone (exec, runtime, up to started)':<60} "
              f"{statistics.mean(alone):7.3f} {start_alone:7.3f}   (n={len(alone)})")
    part("spawn: began -> the successor started, less that", parts["spawn"], start_alone)
    part("  of which began -> instance.spawned recorded (fdatasync, fork)", parts["fork"])
    part("  of which instance.spawned -> started, less the start alone", parts["after_spawned"], start_alone)
    part("ready report -> the old one hears stop (records, signal)", parts["ready_to_stop"])
    part("  of which ready -> instance.ready recorded (the report's way in)", parts["report"])
    part("gap: the old one's stopped -> the successor hears go", parts["gap"])
    part("go -> ended (the commit's records, current flipped, the end)", parts["go_to_end"])
    handoff_count = len(handoffs)
    if handoff_count and "baton_ledger_fsync_seconds_count" in ledger_after:
        syncs = ledger_after["baton_ledger_fsync_seconds_count"] - ledger_before.get("baton_ledger_fsync_seconds_count", 0)
        sync_ms = (ledger_after["baton_ledger_fsync_seconds_sum"] - ledger_before.get("baton_ledger_fsync_seconds_sum", 0)) * 1000
        appends = ledger_after["baton_ledger_appends_total"] - ledger_before.get("baton_ledger_appends_total", 0)
        print(f"  ledger: {appends / handoff_count:.1f} records in {syncs / handoff_count:.1f} fdatasyncs per handoff, "
              f"{sync_ms / handoff_count:.3f} ms of fdatasync ({sync_ms / max(syncs, 1):.3f} ms each)")

    def verdict(ok):
        return "PASS" if ok else "MISS"

    print(f"{verdict(percentile(agent_gaps, 50) < 0.2)}  gap p50 < 0.2 ms ({percentile(agent_gaps, 50):.3f} ms, agents' view)")
    print(f"{verdict(percentile(agent_gaps, 99) < 1)}  gap p99 < 1 ms ({percentile(agent_gaps, 99):.3f} ms, agents' view)")
    print(f"{verdict(percentile(own_work, 50) < 5)}  batond's own work p50 < 5 ms ({percentile(own_work, 50):.3f} ms)")
    if len(committed) != len(handoffs):
        sys.exit(f"bench: {len(handoffs) - len(committed)} handoffs did not commit")


if __name__ == "__main__":
    main()
