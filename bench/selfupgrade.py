#!/usr/bin/env python3
"""`make bench` part 4: batond upgrading itself in place, under load.

usage: bench/selfupgrade.py BATOND [COUNT]

Seeds batond's binary store (`batond --install-self`), starts batond through
`daemon/current/batond` with a NOTIFY_SOCKET of its own, stores a second copy of
the same binary with bytes appended (same code, another digest), then, while `wrk`
loads TCP /healthz and a client loops on the Unix socket (one request per
connection), upgrades COUNT times, alternating between the two binaries.
Prints:
  - self-upgrade time: POST /v1/daemon/upgrade sent -> READY=1 from the new image,
    p50 / max (and the 202's own latency: self-check + ledger record),
  - refused or failed requests during the run: wrk's socket errors and non-2xx
    answers, and the Unix client's failures (target 0),
and checks that the pid never changed.
"""
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from unixhttp import UnixHTTPConnection


def main():
    batond = os.path.abspath(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    state = tempfile.mkdtemp(prefix="baton-bench-selfupgrade.")
    notify_path = os.path.join(state, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)

    def wait_for(line, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = notify.recv(4096).decode()
            except socket.timeout:
                break
            if line in message.split("\n"):
                return time.monotonic()
        sys.exit(f"bench: no {line} from batond within {timeout} s")

    subprocess.run([batond, "--install-self", "--state-dir", state], check=True, stdout=subprocess.DEVNULL)
    seeded = os.readlink(os.path.join(state, "daemon", "current"))
    copy = open(batond, "rb").read() + b"\nbaton bench self-upgrade\n"
    other = hashlib.sha256(copy).hexdigest()

    environment = dict(os.environ, NOTIFY_SOCKET=notify_path)
    sock = os.path.join(state, "batond.sock")
    daemon = subprocess.Popen([os.path.join(state, "daemon", "current", "batond"), "--state-dir", state,
                               "--socket", sock, "--listen", "127.0.0.1:0", "--log-level", "warning"],
                              env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrk = None
    try:
        wait_for("READY=1")
        address = open(os.path.join(state, "batond.addr")).read().strip()
        token = open(os.path.join(state, "operator.token")).read().strip()
        host, port = address.rsplit(":", 1)

        def call(method, path, body=None, headers=None):
            connection = http.client.HTTPConnection(host, int(port), timeout=120)
            connection.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", **(headers or {})})
            response = connection.getresponse()
            payload = response.read()
            connection.close()
            return response.status, payload

        digest = base64.b64encode(hashlib.sha256(copy).digest()).decode()
        status, payload = call("PUT", "/v1/daemon/binary", copy,
                               {"Content-Digest": f"sha-256=:{digest}:", "Content-Type": "application/octet-stream"})
        if status != 201:
            sys.exit(f"bench: storing the binary answered {status}: {payload[:200]!r}")

        unix = {"ok": 0, "failed": 0, "last": ""}
        running = threading.Event()
        running.set()

        def loop():
            while running.is_set():
                try:
                    connection = UnixHTTPConnection(sock)
                    connection.request("GET", "/healthz")
                    response = connection.getresponse()
                    response.read()
                    connection.close()
                    if response.status == 200:
                        unix["ok"] += 1
                    else:
                        unix["failed"] += 1
                        unix["last"] = f"status {response.status}"
                except Exception as error:  # noqa: BLE001 - every failure counts
                    unix["failed"] += 1
                    unix["last"] = repr(error)

        client = threading.Thread(target=loop)
        client.start()
        seconds = 2 + count * 2
        wrk = subprocess.Popen(["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", f"http://{address}/healthz"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)
        times, answers = [], []
        targets = [other if number % 2 == 0 else seeded for number in range(count)]
        for target in targets:
            sent = time.monotonic()
            status, payload = call("POST", "/v1/daemon/upgrade", json.dumps({"digest": target}).encode(),
                                   {"Content-Type": "application/json"})
            answered = time.monotonic()
            if status != 202:
                sys.exit(f"bench: upgrade to {target} answered {status}: {payload[:300]!r}")
            ready = wait_for("READY=1")
            times.append((ready - sent) * 1000)
            answers.append((answered - sent) * 1000)
            time.sleep(0.5)
        output, _ = wrk.communicate(timeout=seconds + 30)
        wrk = None
        running.clear()
        client.join()
        status, payload = call("GET", "/v1/daemon")
        view = json.loads(payload)
    finally:
        if wrk is not None:
            wrk.kill()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        notify.close()
        shutil.rmtree(state, ignore_errors=True)

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    bad = int(non2xx.group(1)) if non2xx else 0
    total = re.search(r"(\d+) requests in", output)
    print("   " + "\n   ".join(output.strip().split("\n")))
    print(f"self-upgrades: {count}, pid {view['pid']} (started as {daemon.pid}), running {view['sha256'][:12]}..., "
          f"batond exit {code}")
    print(f"self-upgrade time (POST -> READY=1)  p50 {statistics.median(times):8.1f} ms   max {max(times):8.1f} ms")
    print(f"  of which the 202 (self-check)      p50 {statistics.median(answers):8.1f} ms   max {max(answers):8.1f} ms")
    print(f"requests during the run: wrk {total.group(1) if total else '?'} (socket errors {socket_errors}, "
          f"non-2xx {bad}); unix loop {unix['ok']} ok, {unix['failed']} failed {unix['last']}")
    refused = socket_errors + bad + unix["failed"]
    print(f"{'PASS' if refused == 0 else 'MISS'}  refused or failed requests during self-upgrades = 0 ({refused})")
    if view["pid"] != daemon.pid:
        sys.exit("bench: the pid changed")
    if code != 0:
        sys.exit(f"bench: batond exited {code} after SIGTERM")


if __name__ == "__main__":
    main()
