#!/usr/bin/env python3
"""`make bench` part 4: batond killed with SIGKILL, restarted, re-adopting N agents.

usage: bench/readopt.py BATOND TESTAGENT [AGENTS] [ROUNDS]

Starts batond on a fresh state directory with AGENTS agents (default 100), each
running baton-testagent, and waits until every one works. Then, ROUNDS times:
SIGKILL batond, start it again on the same state directory, and time from the kill
to the first `/readyz` 200 (batond answers ready only once every agent re-adopted its
instances). After each round it checks, from batond's API and the agents' own event
file, that every agent kept its pid and that no instance was started.

The baseline, measured in the same run: the cold start of the same batond with the
same agents (start to `/readyz` 200 and every agent running).
Target: re-adoption of 100 agents to /readyz under 500 ms (p50).
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

from unixhttp import UnixHTTPConnection


def main():
    batond, testagent = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    agents = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    state = tempfile.mkdtemp(prefix="baton-bench-readopt.")
    events = os.path.join(state, "events.log")
    sock = os.path.join(state, "batond.sock")
    config = os.path.join(state, "batond.toml")
    lines = ["[daemon]", "stop_agents_on_exit = true", ""]
    for index in range(agents):
        name = f"a{index}"
        bin_dir = os.path.join(state, "releases", name, "1", "bin")
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, "agent"), "w") as script:
            script.write(f"#!/bin/sh\nexec '{testagent}' --events '{events}'\n")
        os.chmod(os.path.join(bin_dir, "agent"), 0o755)
        os.symlink("1", os.path.join(state, "releases", name, "current"))
        lines += [f"[agents.{name}]", 'command = ["{release}/bin/agent"]', ""]
    with open(config, "w") as handle:
        handle.write("\n".join(lines))
    arguments = [batond, "--config", config, "--state-dir", state, "--socket", sock, "--log-level", "warning"]

    def start():
        return subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(path):
        connection = UnixHTTPConnection(sock)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def ready_status():
        try:
            return get("/readyz")[0]
        except OSError:
            return None

    def wait_ready(daemon, began, deadline=60):
        while ready_status() != 200:
            if daemon.poll() is not None:
                sys.exit("bench: batond exited")
            if time.monotonic() - began > deadline:
                sys.exit("bench: batond not ready")
            time.sleep(0.001)
        return (time.monotonic() - began) * 1000

    def pids():
        status, body = get("/v1/agents")
        found = {}
        for agent in json.loads(body)["agents"]:
            instances = agent.get("instances", [])
            if agent.get("state") == "running" and instances:
                found[agent["name"]] = instances[0]["pid"]
        return found

    def started():
        with open(events) as handle:
            return sum(1 for line in handle if line.startswith("started "))

    daemon = None
    try:
        began = time.monotonic()
        daemon = start()
        wait_ready(daemon, began)
        while len(pids()) < agents:
            if time.monotonic() - began > 120:
                sys.exit("bench: the agents did not all start")
            time.sleep(0.01)
        cold = (time.monotonic() - began) * 1000
        before = pids()
        spawned = started()
        times = []
        for _ in range(rounds):
            began = time.monotonic()
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            daemon = start()
            times.append(wait_ready(daemon, began))
            after = pids()
            if after != before:
                sys.exit(f"bench: pids changed after the restart ({len(after)} running, {sum(1 for k in after if after[k] != before.get(k))} differ)")
            if started() != spawned:
                sys.exit(f"bench: {started() - spawned} instances were started beside live ones")
        p50 = statistics.median(times)
        print(f"cold start, {agents} agents running:       {cold:8.1f} ms (baseline)")
        print(f"kill -9 to /readyz, {agents} re-adopted:    p50 {p50:6.1f} ms, max {max(times):6.1f} ms over {rounds} rounds")
        print(f"pids kept, no instance started:           {agents} agents x {rounds} rounds")
        print(f"{'PASS' if p50 < 500 else 'MISS'}  re-adoption of {agents} agents to /readyz < 500 ms  (p50 {p50:.1f} ms)")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
