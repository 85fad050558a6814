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
each as p50 / p99 / max, and PASS/MISS against the targets.
"""
import json
import os
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
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1000


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
    config = os.path.join(state, "batond.toml")
    with open(config, "w") as handle:
        handle.write('[agents.bench]\ncommand = ["{release}/bin/agent"]\nready_timeout = "10s"\n'
                     'stop_timeout = "5s"\nkill_timeout = "2s"\n')
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

        # Wait for the first instance to work.
        deadline = time.time() + 30
        while call("GET", "/v1/agents/bench")["state"] != "running":
            if time.time() > deadline:
                sys.exit("bench: the agent did not start")
            time.sleep(0.05)

        cursor = call("GET", "/v1/status")["ledger"]["last_seq"]
        handoffs = []
        for number in range(count):
            target = "b" if number % 2 == 0 else "a"
            began = call("PUT", "/v1/agents/bench/desired", {"version": target})
            ended = False
            while not ended:
                page = call("GET", f"/v1/events?since={cursor}&wait=30")
                cursor = page["last_seq"]
                ended = any(r["kind"] == "handoff.ended" and r["data"]["handoff"] == began["id"] for r in page["records"])
            handoffs.append(call("GET", f"/v1/handoffs/{began['id']}"))
        # Let the last successor hear its go before reading the agents' file.
        time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)

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

    def verdict(ok):
        return "PASS" if ok else "MISS"

    print(f"{verdict(percentile(agent_gaps, 50) < 1)}  gap p50 < 1 ms ({percentile(agent_gaps, 50):.3f} ms, agents' view)")
    print(f"{verdict(percentile(agent_gaps, 99) < 5)}  gap p99 < 5 ms ({percentile(agent_gaps, 99):.3f} ms, agents' view)")
    print(f"{verdict(percentile(overheads, 50) < 20)}  overhead p50 < 20 ms ({percentile(overheads, 50):.3f} ms)")
    if len(committed) != len(handoffs):
        sys.exit(f"bench: {len(handoffs) - len(committed)} handoffs did not commit")


if __name__ == "__main__":
    main()
