#!/usr/bin/env python3
"""`make bench`: the same HTTP agent upgraded under load by supervisord and by baton.

usage: bench/peers.py [--quick] [--upgrades N] [--delays 0,0.5,2] [--rate R]
                      [--setups supervisord,bind,listen]
                      --batond BATOND --baton BATON --agent AGENT --supervisor-bin DIR

AGENT is examples/http-agent, run with `--startup-delay S`, `--bind tcp://HOST:PORT`
and `--standalone-version VERSION` (the version it answers with under supervisord;
under batond it answers with BATON_VERSION). For each
start-up delay S and each setup, on a fresh temp dir and a fresh free port, the agent
serves while a load generator sends about R requests/s (default 1,000), a new
connection per request, and the agent is upgraded N times (default 20) to a new
version each time (v1, v2, ...; releases are directories named after their version,
all running the same AGENT):

  supervisord      supervisord (its own config in the temp dir, supervisorctl on a
                   Unix socket): the program runs `current/bin/agent --bind ...`;
                   an upgrade points `current` at the next release (rename of a
                   symlink) and runs `supervisorctl restart web`
  baton --bind     batond, agent in parallel mode, the agent binding its port after
                   go (`--bind`); an upgrade is `baton upgrade web vN`
  baton listen     the same with `listen = ["tcp://127.0.0.1:PORT"]`: batond holds
                   the socket and passes it to every instance

Each request is attributed to the upgrade whose command started last before it was
sent. Per upgrade: the requests that failed (refused, reset, timed out, or any answer
but a 200 with a body), the unavailability window (from the first failed request's
send to the send of the first request that succeeded after the last failed one; 0
when none failed), the upgrade command's wall time, and the longest successful
request (a request held in the backlog succeeds late rather than failing). Printed:
median and max of failures, how many upgrades lost at least one, window and command
p50/max, the slowest successful request p50/max, and whether every upgrade switched
the answering version (the new version answered, and no request sent after that
answer came back was answered by another version).
After each upgrade the load runs until the new version answers, then 0.5 s more.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SETTLE = 0.5          # seconds of steady load after the new version answers
REQUEST_TIMEOUT = 3.0
SERVE_TIMEOUT = 30.0  # for the first answer after a start or an upgrade


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values, p):
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def version_of(body):
    # "<agent> <version> (instance ..., pid ...)"
    parts = body.split()
    return parts[1] if len(parts) > 1 else None


class Load:
    """THREADS threads, each sending RATE/THREADS requests/s on a fixed schedule (no
    catching up after a stall): new TCP connection, GET /, read to EOF."""

    def __init__(self, port, rate, threads=8):
        self.port = port
        self.rate = rate
        self.threads = threads
        self.running = threading.Event()
        # Per thread: (sent_ns, done_ns, failure kind or None, version or None).
        self.records = [[] for _ in range(threads)]
        self.last_version = None
        self.workers = []

    def start(self):
        self.running.set()
        for number in range(self.threads):
            worker = threading.Thread(target=self.loop, args=(number,), daemon=True)
            worker.start()
            self.workers.append(worker)

    def stop(self):
        self.running.clear()
        for worker in self.workers:
            worker.join()
        return sorted(record for records in self.records for record in records)

    def loop(self, number):
        interval = self.threads / self.rate
        due = time.monotonic() + number * interval / self.threads
        records = self.records[number]
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        while self.running.is_set():
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            due = max(due + interval, time.monotonic() - interval)
            sent = time.monotonic_ns()
            kind, version = None, None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=REQUEST_TIMEOUT) as client:
                    client.sendall(request)
                    answer = b""
                    while True:
                        chunk = client.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200 ") or not body:
                    kind = "bad-answer" if answer else "reset"
                else:
                    version = version_of(body.decode(errors="replace"))
                    self.last_version = version
            except ConnectionRefusedError:
                kind = "refused"
            except (ConnectionResetError, BrokenPipeError):
                kind = "reset"
            except socket.timeout:
                kind = "timeout"
            except OSError as error:
                kind = f"error {error.errno}"
            records.append((sent, time.monotonic_ns(), kind, version))

    def wait_for_version(self, version, deadline):
        while self.last_version != version:
            if time.monotonic() > deadline:
                raise RuntimeError(f"version {version} never answered (last answer: {self.last_version})")
            time.sleep(0.005)


def write_release(root, version, agent, delay, port):
    """releases/<version>/bin/agent: runs AGENT with the flags; the same binary for every version."""
    bin_dir = os.path.join(root, version, "bin")
    os.makedirs(bin_dir)
    command = [agent, "--startup-delay", str(delay), "--bind", f"tcp://127.0.0.1:{port}",
               "--standalone-version", version]
    script = os.path.join(bin_dir, "agent")
    with open(script, "w") as handle:
        handle.write("#!/bin/sh\nexec " + " ".join("'" + part.replace("'", "'\\''") + "'" for part in command) + "\n")
    os.chmod(script, 0o755)


def wait_until(check, what, timeout=SERVE_TIMEOUT, process=None):
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return client.recv(4096).startswith(b"HTTP/1.1 200 ")
    except OSError:
        return False


def clean_environment():
    return {name: value for name, value in os.environ.items()
            if not name.startswith("BATON_") and not name.startswith("LISTEN_")}


class Supervisord:
    name = "supervisord restart"

    def __init__(self, options, directory, port):
        self.directory, self.port = directory, port
        self.releases = os.path.join(directory, "releases")
        self.config = os.path.join(directory, "supervisord.conf")
        self.supervisord = [os.path.join(options.supervisor_bin, "supervisord"), "-c", self.config]
        self.ctl = [os.path.join(options.supervisor_bin, "supervisorctl"), "-c", self.config]
        with open(self.config, "w") as handle:
            handle.write(f"""[unix_http_server]
file = {directory}/supervisor.sock
chmod = 0700

[supervisord]
nodaemon = true
logfile = {directory}/supervisord.log
pidfile = {directory}/supervisord.pid
childlogdir = {directory}
loglevel = warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{directory}/supervisor.sock

[program:web]
command = {directory}/current/bin/agent
directory = {directory}/current
autorestart = true
stopsignal = TERM
stdout_logfile = {directory}/web.log
redirect_stderr = true
""")
        self.process = None

    def start(self, version):
        os.symlink(os.path.join(self.releases, version), os.path.join(self.directory, "current"))
        self.process = subprocess.Popen(self.supervisord, env=clean_environment(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: answers(self.port), "supervisord's agent answering", process=self.process)

    def upgrade(self, version):
        link = os.path.join(self.directory, "current.new")
        os.symlink(os.path.join(self.releases, version), link)
        os.rename(link, os.path.join(self.directory, "current"))
        result = subprocess.run(self.ctl + ["restart", "web"], capture_output=True, text=True)
        if result.returncode != 0 or "ERROR" in result.stdout:
            raise RuntimeError(f"supervisorctl restart: exit {result.returncode}: {result.stdout}{result.stderr}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


class Batond:
    def __init__(self, options, directory, port, listen):
        self.name = "baton listen (hand-over)" if listen else "baton --bind"
        self.options, self.directory, self.port = options, directory, port
        self.releases = os.path.join(directory, "releases", "web")
        self.socket = os.path.join(directory, "batond.sock")
        self.config = os.path.join(directory, "batond.toml")
        with open(self.config, "w") as handle:
            handle.write('[daemon]\nstop_agents_on_exit = true\n\n[agents.web]\ncommand = ["{release}/bin/agent"]\n'
                         'mode = "parallel"\nready_timeout = "30s"\nstop_timeout = "10s"\nkill_timeout = "5s"\n')
            if listen:
                handle.write(f'listen = ["tcp://127.0.0.1:{port}"]\n')
        self.process = None

    def start(self, version):
        os.symlink(version, os.path.join(self.releases, "current"))
        self.process = subprocess.Popen([self.options.batond, "--config", self.config, "--state-dir", self.directory,
                                         "--socket", self.socket, "--log-level", "warning"],
                                        env=clean_environment(), stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(self.directory, "batond.log"), "w"))
        wait_until(lambda: answers(self.port), "batond's agent answering", process=self.process)

    def upgrade(self, version):
        result = subprocess.run([self.options.baton, "upgrade", "web", version], capture_output=True, text=True,
                                env=dict(clean_environment(), BATON_SOCKET=self.socket))
        if result.returncode != 0:
            raise RuntimeError(f"baton upgrade web {version}: exit {result.returncode}: {result.stdout}{result.stderr}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


def run(setup, options, delay):
    """Upgrades under load; returns the per-upgrade figures and the load's totals."""
    versions = [f"v{number}" for number in range(options.upgrades + 1)]
    for version in versions:
        write_release(setup.releases, version, options.agent, delay, setup.port)
    load = Load(setup.port, options.rate)
    setup.start(versions[0])
    try:
        load.start()
        load.wait_for_version(versions[0], time.monotonic() + SERVE_TIMEOUT)
        time.sleep(SETTLE)
        marks, commands = [], []
        for version in versions[1:]:
            began = time.monotonic_ns()
            setup.upgrade(version)
            commands.append((time.monotonic_ns() - began) / 1e6)
            marks.append(began)
            load.wait_for_version(version, time.monotonic() + SERVE_TIMEOUT)
            time.sleep(SETTLE)
        records = load.stop()
    finally:
        if load.running.is_set():
            load.stop()
        setup.stop()

    before = [r for r in records if r[0] < marks[0]]
    upgrades = []
    for index, mark in enumerate(marks):
        end = marks[index + 1] if index + 1 < len(marks) else float("inf")
        window = [r for r in records if mark <= r[0] < end]
        failed = [r for r in window if r[2] is not None]
        unavailable = 0.0
        if failed:
            last = failed[-1][0]
            recovered = next((r for r in window if r[0] > last and r[2] is None), None)
            unavailable = ((recovered[0] if recovered else window[-1][1]) - failed[0][0]) / 1e6
        new, old = versions[index + 1], versions[index]
        # Once an answer from the new version came back, no request sent after it may be
        # answered by another version (times taken before the send and after the answer).
        first_new = min((r[1] for r in window if r[3] == new), default=None)
        stale = sum(1 for r in window if first_new is not None and r[3] not in (new, None) and r[0] > first_new)
        upgrades.append({
            "failed": len(failed),
            "kinds": sorted({r[2] for r in failed}),
            "unavailable": unavailable,
            "command": commands[index],
            "slowest": max(((r[1] - r[0]) / 1e6 for r in window if r[2] is None), default=0.0),
            "switched": first_new is not None and stale == 0 and all(r[3] in (old, new, None) for r in window),
            "versions": f"new version answered: {first_new is not None}, older answers sent after it: {stale}, "
                        f"versions seen: {sorted({r[3] for r in window if r[3]})}",
        })
    seconds = (records[-1][0] - records[0][0]) / 1e9 if len(records) > 1 else 1
    return upgrades, {"requests": len(records), "rate": len(records) / seconds,
                      "failed_before": sum(1 for r in before if r[2] is not None)}


def row(delay, name, upgrades, totals):
    failed = [u["failed"] for u in upgrades]
    windows = [u["unavailable"] for u in upgrades]
    commands = [u["command"] for u in upgrades]
    slowest = [u["slowest"] for u in upgrades]
    switched = sum(1 for u in upgrades if u["switched"])
    kinds = sorted({kind for u in upgrades for kind in u["kinds"]})
    return (f"{delay:>5}s  {name:<26} {statistics.median(failed):>6g} {max(failed):>6} {sum(1 for f in failed if f):>4}/{len(upgrades):<3}"
            f" {percentile(windows, 50):>8.1f} {max(windows):>8.1f}"
            f" {percentile(commands, 50):>8.1f} {max(commands):>8.1f}"
            f" {percentile(slowest, 50):>8.1f} {max(slowest):>8.1f}"
            f"   {switched}/{len(upgrades)}   {totals['rate']:>5.0f}   {','.join(kinds) or '-'}")


HEADER = ("start  setup                      failed/upgrade  lost   unavailable ms     command ms    slowest ok ms"
          "  switched  req/s  failures\n"
          "                                   med    max             p50      max      p50      max      p50      max")


def main():
    parser = argparse.ArgumentParser(prog="bench/peers.py", description=__doc__.split("\n")[0])
    parser.add_argument("--batond", required=True)
    parser.add_argument("--baton", required=True)
    parser.add_argument("--agent", required=True, help="examples/http-agent's binary")
    parser.add_argument("--supervisor-bin", required=True, help="the directory holding supervisord and supervisorctl")
    parser.add_argument("--upgrades", type=int, default=20)
    parser.add_argument("--delays", default="0,0.5,2")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--setups", default="supervisord,bind,listen")
    parser.add_argument("--quick", action="store_true", help="5 upgrades per run instead of 20")
    options = parser.parse_args()
    if options.quick:
        options.upgrades = 5
    for name in ("batond", "baton", "agent"):
        setattr(options, name, os.path.abspath(getattr(options, name)))
    options.supervisor_bin = os.path.abspath(options.supervisor_bin)
    delays = [float(text) for text in options.delays.split(",")]
    version = subprocess.run([os.path.join(options.supervisor_bin, "supervisord"), "--version"],
                             capture_output=True, text=True).stdout.strip()
    print(f"agent {options.agent}; supervisord {version}; {options.upgrades} upgrades per run, "
          f"~{options.rate:g} requests/s, a new connection each")

    lines, problems = [], []
    for delay in delays:
        for kind in options.setups.split(","):
            directory = tempfile.mkdtemp(prefix=f"baton-bench-peers-{kind}.")
            port = free_port()
            if kind == "supervisord":
                setup = Supervisord(options, directory, port)
            else:
                setup = Batond(options, directory, port, listen=(kind == "listen"))
            try:
                upgrades, totals = run(setup, options, delay)
            except (RuntimeError, subprocess.SubprocessError) as error:
                problems.append(f"{setup.name}, start-up {delay:g} s: {error} (kept {directory})")
                print(f"   {problems[-1]}", flush=True)
                continue
            line = row(f"{delay:g}", setup.name, upgrades, totals)
            print("   " + line, flush=True)
            lines.append(line)
            if totals["failed_before"]:
                problems.append(f"{setup.name}, start-up {delay:g} s: {totals['failed_before']} requests failed "
                                f"before the first upgrade (the load generator or the machine is overloaded)")
            for number, upgrade in enumerate(upgrades, 1):
                if not upgrade["switched"]:
                    problems.append(f"{setup.name}, start-up {delay:g} s, upgrade {number}: the answering version "
                                    f"did not switch cleanly ({upgrade['versions']})")
            shutil.rmtree(directory, ignore_errors=True)
    print()
    print(HEADER)
    for line in lines:
        print(line)
    for problem in problems:
        print(f"bench: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
