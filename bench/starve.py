#!/usr/bin/env python3
"""`make bench`: load and starvation. Floods batond's listeners, one load at a time and
then all at once, while a real agent hands over back to back, and measures whether the
agents, operators and probes are still served.

usage: bench/starve.py BATOND TESTAGENT POLLERS MHD_FIXED [--instances N] [--streams N]
                       [--seconds S] [--late-ms X]

POLLERS is bench/pollers.c built, MHD_FIXED bench/mhd_fixed.c built (the C baseline).

batond (a fresh state directory) runs two agents: `bench`, releases `a` and `b` of
baton-testagent (each writes its own event file), handed over back to back by an
operator on the control socket throughout every phase; and `pollers`, an external agent
whose instances register themselves. Each phase lasts S seconds (default 15):

  baseline   no load
  wrk        wrk -t1 -c32 on GET /v1/status over TCP (the probes' and token holders' listener)
  sse        STREAMS (default 1000) Server-Sent Events streams of /v1/events on the
             control socket (the operators' listener), read as they come
  slowloris  half-open heads (a header byte every 2 s) on TCP, kept at 1.1x
             http.max_connections (closed ones reopened: the listener stays full, every
             new one evicts the oldest), and 100 on the agent socket (one uid: its cap)
  bodies     2 MiB bodies in a loop over TCP, with the operator's token, to
             PUT /v1/agents/bench/desired: Content-Length ones (refused from the head)
             and chunked ones (read, then refused); 413 expected, in the one error shape
  pollers    N (default 5000) processes, each registered as an instance of `pollers`
             and holding 2 signal long-polls parked (bench/pollers.c farm): 2N parked
             on the agent socket
  all        every load above at once (the pollers stay from the phase before)

Throughout every phase, on threads of their own, every 20 ms:
  probe      GET /healthz over TCP (new connection each)
  operator   GET /v1/agents/bench over the control socket, with the operator token
  agent      GET /v1/instances/ID/signal (no wait) over the agent socket, by a real
             registered instance (bench/pollers.c probe)
each timed (p50, p99, max) with failures (no answer within 5 s, or not 200) counted.

The agents' signals: every `instance.signal` record of `bench` (go or stop, the moment
batond decided it, millisecond wall-clock time in the ledger) is matched with the agent's
own `go` or `stop-received` line (CLOCK_MONOTONIC, moved onto the wall clock). Missed: no
such line; late: later than X ms (default 1000) after the record. Target: none.

Also printed: batond's RSS (start, peak per phase, end), wrk's rate on /v1/status
against the C server's on /healthz, streams held, parked polls held (batond's
baton_http_parked_requests), slowloris connections held and closed by batond, the
2 MiB bodies' answers. Nothing is sent anywhere but loopback and the state directory's
sockets. The exit status is non-zero when a handoff failed, a signal was missed or late,
a scope went unserved, or batond crashed.
"""
import argparse
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime

from handoffs import percentile, wall_minus_monotonic_ms

REGISTRATION_TOKEN = "starve-registration-token-0123456789"
BODY_BYTES = 2 << 20


def millis(text):
    return datetime.strptime(text + "+0000", "%Y-%m-%dT%H:%M:%S.%fZ%z").timestamp() * 1000


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def connect(target, timeout):
    kind, address = target
    sock = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def request(target, method, path, token=None, body=None, timeout=5.0):
    """One request on a new connection: (status, body bytes); raises on no answer."""
    sock = connect(target, timeout)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        data = body.encode() if body else b""
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        if not received:
            raise ConnectionError("closed without an answer")
        return int(received.split(b" ", 2)[1]), received.split(b"\r\n\r\n", 1)[1]
    finally:
        sock.close()


class Sampler(threading.Thread):
    """Times one request every 20 ms: (monotonic ns at start, ms, ok)."""

    def __init__(self, ask):
        super().__init__(daemon=True)
        self.ask, self.samples, self.stop = ask, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            began = time.monotonic_ns()
            try:
                ok = self.ask() == 200
            except (OSError, ConnectionError, ValueError, IndexError):
                ok = False
            self.samples.append((began, (time.monotonic_ns() - began) / 1e6, ok))
            self.stop.wait(0.02)


class Slowloris(threading.Thread):
    """COUNT half-open heads on one listener, a header byte each every 2 s; those batond
    closes are opened again (at most 200 a second), so the listener stays full."""

    def __init__(self, target, count):
        super().__init__(daemon=True)
        self.target, self.count, self.sockets = target, count, []
        self.opened = self.closed_by_server = self.refused = self.most = 0
        self.stop = threading.Event()

    def open_one(self):
        try:
            sock = connect(self.target, 1)
            sock.setblocking(False)
            sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            self.sockets.append(sock)
            self.opened += 1
        except OSError:
            self.refused += 1

    def run(self):
        while not self.stop.is_set():
            alive = []
            for sock in self.sockets:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except (OSError, ConnectionError):
                    self.closed_by_server += 1
                    sock.close()
                    continue
                try:
                    sock.send(b"X")
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_by_server += 1
                    sock.close()
                    continue
                alive.append(sock)
            self.sockets = alive
            self.most = max(self.most, len(alive))
            second = time.monotonic() + 2
            while len(self.sockets) < self.count and time.monotonic() < second and not self.stop.is_set():
                for _ in range(min(200, self.count - len(self.sockets))):
                    self.open_one()
                self.most = max(self.most, len(self.sockets))
                self.stop.wait(1)
            self.stop.wait(max(0, second - time.monotonic()))

    def close(self):
        self.stop.set()
        self.join()
        for sock in self.sockets:
            sock.close()


class Streams(threading.Thread):
    """COUNT event streams, read as they come."""

    def __init__(self, target, token, count, since):
        super().__init__(daemon=True)
        self.selector, self.sockets, self.refused, self.ended, self.bytes = selectors.DefaultSelector(), [], 0, 0, 0
        self.stop = threading.Event()
        head = (f"GET /v1/events?since={since} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                f"Authorization: Bearer {token}\r\n\r\n").encode()
        for _ in range(count):
            try:
                sock = connect(target, 5)
                sock.sendall(head)
                first = sock.recv(65536)
            except OSError:
                self.refused += 1
                continue
            if not first.startswith(b"HTTP/1.1 200"):
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            self.sockets.append(sock)
            self.selector.register(sock, selectors.EVENT_READ)

    def run(self):
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self.ended += 1
                    self.selector.unregister(key.fileobj)
                    continue
                self.bytes += len(chunk)

    @property
    def held(self):
        return len(self.sockets) - self.ended

    def close(self):
        self.stop.set()
        self.join()
        for sock in self.sockets:
            sock.close()


class Bodies(threading.Thread):
    """2 MiB bodies in a loop, alternately with Content-Length and chunked."""

    def __init__(self, target, token):
        super().__init__(daemon=True)
        self.target, self.token, self.stop = target, token, threading.Event()
        self.answers, self.shapes_wrong, self.errors, self.sent = {}, 0, 0, 0

    def one(self, chunked):
        sock = connect(self.target, 10)
        try:
            head = (f"PUT /v1/agents/bench/desired HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\n"
                    "Content-Type: application/json\r\n")
            head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {BODY_BYTES}\r\n\r\n"
            sock.sendall(head.encode())
            piece = b"x" * 65536
            answer = b""
            sock.setblocking(False)
            for _ in range(BODY_BYTES // len(piece)):
                data = (b"10000\r\n" + piece + b"\r\n") if chunked else piece
                try:
                    sock.sendall(data)
                except BlockingIOError:
                    pass  # batond answered and stopped reading: look for the answer
                except OSError:
                    break
                try:
                    answer += sock.recv(65536)
                    if b"\r\n\r\n" in answer:
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    break
            if chunked and b"\r\n\r\n" not in answer:
                try:
                    sock.sendall(b"0\r\n\r\n")
                except OSError:
                    pass
            sock.settimeout(10)
            sock.setblocking(True)
            while True:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                answer += chunk
                head_end = answer.find(b"\r\n\r\n")
                if head_end >= 0:
                    length = re.search(rb"(?i)content-length: *(\d+)", answer[:head_end])
                    if length and len(answer) >= head_end + 4 + int(length.group(1)):
                        break
            self.sent += 1
            if not answer:
                self.errors += 1
                return
            status = int(answer.split(b" ", 2)[1])
            self.answers[status] = self.answers.get(status, 0) + 1
            try:
                error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
                if set(error) != {"code", "message"} or not all(isinstance(v, str) for v in error.values()):
                    self.shapes_wrong += 1
            except (ValueError, KeyError, TypeError):
                self.shapes_wrong += 1
        finally:
            sock.close()

    def run(self):
        chunked = False
        while not self.stop.is_set():
            try:
                self.one(chunked)
            except OSError:
                self.errors += 1
            chunked = not chunked

    def close(self):
        self.stop.set()
        self.join()


class Follower(threading.Thread):
    """Follows the ledger's records of agent `bench`."""

    def __init__(self, target, token, since):
        super().__init__(daemon=True)
        self.target, self.token, self.cursor, self.records, self.stop = target, token, since, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                status, body = request(self.target, "GET", f"/v1/events?since={self.cursor}&wait=2&agent=bench",
                                       self.token, timeout=10)
            except (OSError, ConnectionError):
                time.sleep(0.1)
                continue
            if status != 200:
                time.sleep(0.1)
                continue
            page = json.loads(body)
            self.records += page["records"]
            self.cursor = page["last_seq"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("batond")
    parser.add_argument("testagent")
    parser.add_argument("pollers")
    parser.add_argument("mhd_fixed")
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--late-ms", type=float, default=1000)
    parser.add_argument("--max-connections", type=int, default=1200)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    batond, testagent = os.path.abspath(args.batond), os.path.abspath(args.testagent)
    pollers_bin = os.path.abspath(args.pollers)

    state = tempfile.mkdtemp(prefix="baton-bench-starve.")
    events = os.path.join(state, "events-bench.log")
    for release in ("a", "b"):
        bin_dir = os.path.join(state, "releases", "bench", release, "bin")
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, "agent"), "w") as script:
            script.write(f"#!/bin/sh\nexec '{testagent}' --events '{events}'\n")
        os.chmod(os.path.join(bin_dir, "agent"), 0o755)
    os.symlink("a", os.path.join(state, "releases", "bench", "current"))
    config = os.path.join(state, "batond.toml")
    # Sized as docs/limits.md says: parked polls may hold the agent socket's slots less
    # its reserve (an eighth), so 2 per instance and some for the real agents must fit
    # in seven eighths.
    agent_max = (2 * args.instances + 100) * 8 // 7 + 8
    with open(config, "w") as handle:
        handle.write(f"""[http]
max_connections = {args.max_connections}
max_event_streams = {max(args.streams + 50, 100)}
agent_max_connections = {agent_max}

[agents.bench]
command = ["{{release}}/bin/agent"]
ready_timeout = "10s"
stop_timeout = "5s"
kill_timeout = "2s"

[agents.pollers]
external = true
registration_token = "{REGISTRATION_TOKEN}"
ready_timeout = "24h"

[daemon]
stop_agents_on_exit = true
""")
    print(f"== {os.cpu_count()} cores, load average {' '.join(open('/proc/loadavg').read().split()[:3])}; "
          f"{args.instances} instances x 2 parked polls, {args.streams} streams, {args.seconds:g} s per phase, "
          f"late = over {args.late_ms:g} ms")

    # The C baseline first, alone on the machine.
    c_rate = None
    mhd = subprocess.Popen([os.path.abspath(args.mhd_fixed)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(mhd.stdout.readline())
        c_rate, _ = wrk(f"http://127.0.0.1:{port}/healthz", None, args.seconds)
    finally:
        mhd.terminate()
        mhd.wait()

    log = open(os.path.join(state, "batond.log"), "w")
    daemon = subprocess.Popen([batond, "--config", config, "--state-dir", state, "--socket", state + "/batond.sock",
                               "--listen", "127.0.0.1:0", "--log-level", "warning"], stdout=log, stderr=log)
    helpers = []
    failures = []
    try:
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(state, "batond.addr")):
            if time.time() > deadline or daemon.poll() is not None:
                raise SystemExit("starve.py: batond did not start")
            time.sleep(0.05)
        host, port = open(os.path.join(state, "batond.addr")).read().strip().rsplit(":", 1)
        tcp, unix, agent_socket = ("tcp", (host, int(port))), ("unix", state + "/batond.sock"), ("unix", state + "/agent.sock")
        token = open(os.path.join(state, "operator.token")).read().strip()
        while json.loads(request(unix, "GET", "/v1/agents/bench", token)[1]).get("state") != "running":
            time.sleep(0.1)
        rss = {"start": rss_kib(daemon.pid)}
        since = json.loads(request(unix, "GET", "/v1/status", token)[1])["ledger"]["last_seq"]
        follower = Follower(unix, token, since)
        follower.start()

        probe = Sampler(lambda: request(tcp, "GET", "/healthz")[0])
        operator = Sampler(lambda: request(unix, "GET", "/v1/agents/bench", token)[0])
        agent_log = os.path.join(state, "agent-route.log")
        prober = subprocess.Popen([pollers_bin, "probe", agent_socket[1], "pollers", REGISTRATION_TOKEN, "20", agent_log],
                                  stdout=subprocess.PIPE, text=True)
        helpers.append(prober)
        prober.stdout.readline()
        probe.start()
        operator.start()

        versions = ["b", "a"]  # the next version to hand over to first
        phases = []  # (name, began monotonic ns, ended ns, began wall ms, ended wall ms, details)
        handoffs = []  # (phase, outcome, seconds)
        farm = None
        farm_log = os.path.join(state, "pollers.log")

        def parked():
            text = request(tcp, "GET", "/metrics", token)[1].decode()
            match = re.search(r"^baton_http_parked_requests (\d+)", text, re.M)
            return int(match.group(1)) if match else -1

        def start_farm():
            nonlocal farm
            began = time.monotonic()
            farm = subprocess.Popen([pollers_bin, "farm", agent_socket[1], "pollers", REGISTRATION_TOKEN,
                                     str(args.instances), "2", "300", farm_log], stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
            helpers.append(farm)
            line = farm.stdout.readline().strip()
            deadline = time.monotonic() + 60
            while parked() < 2 * args.instances and time.monotonic() < deadline:
                time.sleep(0.5)
            return f"{line}; {parked()} parked after {time.monotonic() - began:.1f} s"

        def run_phase(name, loads):
            details = {}
            for start, _ in loads:
                details.update(start() or {})
            began, began_wall = time.monotonic_ns(), time.time() * 1000
            peak = [0]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_kib(daemon.pid))
                    stop.wait(0.2)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            wrk_result = {}
            wrk_thread = None
            if "wrk" in details:
                def run_wrk():
                    wrk_result["rate"], wrk_result["bad"] = wrk(f"http://{host}:{port}/v1/status", token, args.seconds)
                wrk_thread = threading.Thread(target=run_wrk, daemon=True)
                wrk_thread.start()
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                started = time.monotonic()
                outcome = hand_over(unix, token, versions[0])
                handoffs.append((name, outcome, time.monotonic() - started))
                if outcome == "committed":
                    versions.reverse()
                else:
                    failures.append(f"{name}: a handoff ended {outcome}")
                    time.sleep(0.5)
            if wrk_thread:
                wrk_thread.join()
                details["wrk"] = wrk_result
            details["parked"] = parked()
            began_status = time.monotonic()
            details["v1_status"] = (f"{len(request(tcp, 'GET', '/v1/status', token, timeout=30)[1])} bytes "
                                    f"in {(time.monotonic() - began_status) * 1000:.0f} ms")
            for _, finish in loads:
                details.update(finish() or {})
            stop.set()
            watcher.join()
            details["rss_peak"] = peak[0]
            phases.append((name, began, time.monotonic_ns(), began_wall, time.time() * 1000, details))
            print(f"== phase {name}: {len([h for h in handoffs if h[0] == name])} handoffs; "
                  + "; ".join(f"{k} {v}" for k, v in details.items()))

        # The loads, each a (start, finish) pair returning details.
        holders = {}

        def sse_start():
            holders["streams"] = Streams(unix, token, args.streams, follower.cursor)
            holders["streams"].start()
            return {"streams_opened": len(holders["streams"].sockets), "streams_refused": holders["streams"].refused}

        def sse_finish():
            streams = holders.pop("streams")
            held, received = streams.held, streams.bytes
            streams.close()
            return {"streams_held_at_end": held, "stream_bytes": received}

        def slow_start():
            holders["slow"] = [Slowloris(tcp, int(args.max_connections * 1.1)), Slowloris(agent_socket, 100)]
            for flood in holders["slow"]:
                flood.start()

        def slow_finish():
            tcp_flood, agent_flood = holders.pop("slow")
            for flood in (tcp_flood, agent_flood):
                flood.close()
            return {"slowloris_tcp": f"opened {tcp_flood.opened}, most held {tcp_flood.most}, closed by batond "
                                     f"{tcp_flood.closed_by_server}, refused {tcp_flood.refused}",
                    "slowloris_agent_socket": f"opened {agent_flood.opened}, most held {agent_flood.most}, closed by batond "
                                              f"{agent_flood.closed_by_server}"}

        def bodies_start():
            holders["bodies"] = Bodies(tcp, token)
            holders["bodies"].start()

        def bodies_finish():
            bodies = holders.pop("bodies")
            bodies.close()
            if bodies.shapes_wrong:
                failures.append(f"{bodies.shapes_wrong} answers to 2 MiB bodies not in the one error shape")
            return {"bodies": f"sent {bodies.sent}, answers {bodies.answers}, not the error shape "
                              f"{bodies.shapes_wrong}, no answer {bodies.errors}"}

        def pollers_start():
            if farm is None:
                return {"pollers": start_farm()}

        wrk_pair = (lambda: {"wrk": True}, lambda: None)
        sse_pair, slow_pair, bodies_pair = (sse_start, sse_finish), (slow_start, slow_finish), (bodies_start, bodies_finish)
        pollers_pair = (pollers_start, lambda: None)
        run_phase("baseline", [])
        run_phase("wrk", [wrk_pair])
        run_phase("sse", [sse_pair])
        run_phase("slowloris", [slow_pair])
        run_phase("bodies", [bodies_pair])
        run_phase("pollers", [pollers_pair])
        run_phase("all", [pollers_pair, sse_pair, slow_pair, bodies_pair, wrk_pair])

        if farm is not None:
            os.killpg(farm.pid, signal.SIGKILL)
            farm.wait()
        time.sleep(5)
        rss["end"] = rss_kib(daemon.pid)
        probe.stop.set()
        operator.stop.set()
        probe.join()
        operator.join()
        prober.kill()
        prober.wait()
        time.sleep(0.5)
        follower.stop.set()
        follower.join()
        if daemon.poll() is not None:
            failures.append(f"batond exited {daemon.returncode} during the run")
    finally:
        for helper in helpers:
            if helper.poll() is None:
                try:
                    os.killpg(helper.pid, signal.SIGKILL) if helper is farm else helper.kill()
                except OSError:
                    pass
                helper.wait()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = "killed after 60 s"
        log.close()

    if code != 0:
        failures.append(f"batond exited {code} after SIGTERM")
    report(args, phases, handoffs, probe, operator, agent_log, follower.records, events, farm_log, rss, c_rate, failures)
    if failures:
        print("batond's log (last 30 lines):")
        print("".join(open(os.path.join(state, "batond.log")).readlines()[-30:]))
        print(f"state directory kept: {state}")
    else:
        shutil.rmtree(state, ignore_errors=True)
    if failures:
        counted = {}
        for failure in failures:
            counted[failure] = counted.get(failure, 0) + 1
        raise SystemExit("starve.py: " + "; ".join(f"{f} (x{n})" if n > 1 else f for f, n in counted.items()))


def wrk(url, token, seconds):
    """wrk -t1 -c32 for SECONDS: (requests/s, non-2xx answers)."""
    command = ["wrk", "-t1", "-c32", f"-d{int(seconds)}s", "--latency"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    output = subprocess.run(command + [url], capture_output=True, text=True).stdout
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return (float(rate.group(1)) if rate else 0.0), (int(bad.group(1)) if bad else 0)


def hand_over(target, token, version):
    """PUT desired VERSION and follow the handoff to its end: its outcome."""
    try:
        status, body = request(target, "PUT", "/v1/agents/bench/desired", token, json.dumps({"version": version}), 30)
        if status != 202:
            return f"refused {status} {body[:120]!r}"
        handoff = json.loads(body)["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = request(target, "GET", f"/v1/handoffs/{handoff}?wait=5", token, timeout=30)
            outcome = json.loads(body).get("outcome") if status == 200 else None
            if outcome:
                return outcome
        return "no end within 60 s"
    except (OSError, ConnectionError, ValueError) as error:
        return f"error {error}"


def report(args, phases, handoffs, probe, operator, agent_log, records, events, farm_log, rss, c_rate, failures):
    agent_samples = []
    if os.path.exists(agent_log):
        for line in open(agent_log):
            parts = line.split()
            if len(parts) == 3:
                agent_samples.append((int(parts[0]), int(parts[1]) / 1000, parts[2] == "200"))
    offset = wall_minus_monotonic_ms()
    lines = [line.split() for line in open(events) if line.strip()] if os.path.exists(events) else []
    heard = {}
    for parts in lines:
        if len(parts) == 4 and parts[0] in ("go", "stop-received"):
            heard.setdefault((parts[0], parts[1]), int(parts[3]) / 1e6 + offset)
    signals = [r for r in records if r["kind"] == "instance.signal" and r["data"]["signal"] in ("go", "stop")]

    print()
    print(f"{'phase':<10} {'scope':<9} {'n':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, began, ended, began_wall, ended_wall, details in phases:
        for scope, samples in (("agent", agent_samples), ("operator", operator.samples), ("probe", probe.samples)):
            mine = [s for s in samples if began <= s[0] < ended]
            times = [s[1] for s in mine]
            failed = sum(1 for s in mine if not s[2])
            if not times:
                failures.append(f"{name}: no {scope} request at all")
                continue
            if failed:
                failures.append(f"{name}: {failed} {scope} requests failed")
            print(f"{name:<10} {scope:<9} {len(times):>6} {failed:>6} {percentile(times, 50):>8.2f} "
                  f"{percentile(times, 99):>8.2f} {max(times):>8.2f}")
    print()
    print(f"agents' signals (decision = the instance.signal record; late = over {args.late_ms:g} ms; "
          "milliseconds, the record's time is whole milliseconds):")
    print(f"{'phase':<10} {'handoffs':>8} {'signals':>8} {'missed':>6} {'late':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, began, ended, began_wall, ended_wall, details in phases:
        mine = [r for r in signals if began_wall <= millis(r["time"]) < ended_wall]
        delays, missed = [], 0
        for record in mine:
            kind = "go" if record["data"]["signal"] == "go" else "stop-received"
            at = heard.get((kind, record["data"]["instance"]))
            if at is None:
                missed += 1
            else:
                delays.append(at - millis(record["time"]))
        late = sum(1 for d in delays if d > args.late_ms)
        count = len([h for h in handoffs if h[0] == name])
        if missed or late:
            failures.append(f"{name}: {missed} signals missed, {late} late")
        if delays:
            print(f"{name:<10} {count:>8} {len(mine):>8} {missed:>6} {late:>5} {percentile(delays, 50):>8.2f} "
                  f"{percentile(delays, 99):>8.2f} {max(delays):>8.2f}")
        else:
            print(f"{name:<10} {count:>8} {len(mine):>8} {missed:>6} {late:>5}")
    print()
    for name, _, _, _, _, details in phases:
        took = [h[2] for h in handoffs if h[0] == name]
        if took:
            print(f"{name:<10} handoff p50 {percentile(took, 50) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms")
    print()
    print(f"batond RSS: start {rss['start'] / 1024:.1f} MiB, end {rss.get('end', 0) / 1024:.1f} MiB (the pollers gone); "
          "peak per phase: " + ", ".join(f"{p[0]} {p[5]['rss_peak'] / 1024:.1f}" for p in phases) + " MiB")
    rates = {p[0]: p[5].get("wrk") for p in phases if p[5].get("wrk")}
    if c_rate:
        print(f"wrk -t1 -c32: C server /healthz {c_rate:.0f} req/s; batond /v1/status "
              + ", ".join(f"{name} {r['rate']:.0f} req/s ({r['rate'] / c_rate:.2f}x C, {r['bad']} non-2xx)"
                          for name, r in rates.items()))
    for name, r in rates.items():
        if r["bad"]:
            failures.append(f"{name}: wrk saw {r['bad']} non-2xx answers")
    notes = open(farm_log).read().split("\n") if os.path.exists(farm_log) else []
    kinds = {}
    for line in notes:
        if line:
            kinds[line.split()[0]] = kinds.get(line.split()[0], 0) + 1
    print(f"the pollers' own log: {kinds or 'nothing (no poll answered with a change, none dropped)'}")


if __name__ == "__main__":
    main()
