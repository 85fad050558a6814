#!/usr/bin/env python3
"""`make bench`: the wall time of `baton status` on the Unix socket, against curl.

usage: bench/cli.py BATOND BATON [RUNS]

Starts batond on a fresh state directory with one external agent, then runs, RUNS
times each (default 100), one after the other: `baton status` (the table),
`baton status --json`, and `curl -s --unix-socket SOCK http://localhost/v1/status`,
the same request from a C client, as the baseline measured in the same run. Prints
the median and p90 wall time of each, process start included. Target: `baton
status` under 20 ms.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv, runs, environment):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
        times.append((time.perf_counter() - started) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"cli.py: {' '.join(argv)} exited {result.returncode}: {result.stderr.decode()}")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def main():
    batond, baton = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    state = tempfile.mkdtemp(prefix="baton-bench-cli.")
    socket = os.path.join(state, "batond.sock")
    config = os.path.join(state, "batond.toml")
    with open(config, "w") as handle:
        handle.write("[agents.ext]\nexternal = true\n")
    process = subprocess.Popen([batond, "--config", config, "--state-dir", state, "--socket", socket,
                                "--log-level", "warning"])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(socket):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("cli.py: batond did not start")
            time.sleep(0.05)
        environment = dict(os.environ, BATON_SOCKET=socket, NO_COLOR="1")
        rows = [
            ("baton status", [baton, "status"]),
            ("baton status --json", [baton, "status", "--json"]),
            ("curl --unix-socket /v1/status", ["curl", "-sf", "--unix-socket", socket, "http://localhost/v1/status"]),
        ]
        timed(rows[0][1], 5, environment)  # warm the page cache
        print(f"{runs} runs each, one after the other, on batond's Unix socket")
        for name, argv in rows:
            median, p90 = timed(argv, runs, environment)
            print(f"{name:32} median {median:6.1f} ms   p90 {p90:6.1f} ms")
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
