#!/usr/bin/env python3
"""`make bench`: Server-Sent Events fan-out, N streams of GET /v1/events.

usage: bench/sse.py BATOND [STREAMS] [APPENDS]

Starts batond on a fresh state directory with one external agent (a desired version
appends one record and starts nothing), opens STREAMS (default 1000) event streams on
loopback TCP (Accept: text/event-stream), and reads batond's RSS before and after.
Then APPENDS times (default 20): sends `PUT /v1/agents/ext/desired` and times until
every stream received that record's event. Prints the delay from sending the PUT to
the last stream receiving the event (it includes the request and the ledger's fsync:
the time to the 202 is printed too), and from the first stream to the last (the
fan-out, as this one-threaded reader sees it: it reads the sockets one after the
other), p50 and max.
Checks that every stream received every record, once, in order.
"""
import http.client
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def main():
    batond = os.path.abspath(sys.argv[1])
    streams = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    appends = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < streams + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, streams + 1000), hard))
    state = tempfile.mkdtemp(prefix="baton-bench-sse.")
    config = os.path.join(state, "batond.toml")
    with open(config, "w") as handle:
        handle.write(f"""[http]
max_connections = {streams * 2 + 100}
max_event_streams = {streams * 2}

[agents.ext]
external = true
""")
    process = subprocess.Popen([batond, "--config", config, "--state-dir", state, "--socket", os.path.join(state, "batond.sock"),
                                "--listen", "127.0.0.1:0", "--log-level", "warning"])
    sockets = []
    try:
        addr = os.path.join(state, "batond.addr")
        deadline = time.monotonic() + 30
        while not (os.path.exists(addr) and os.path.getsize(addr) > 0):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("sse.py: batond did not start")
            time.sleep(0.05)
        host, port = open(addr).read().strip().rsplit(":", 1)
        token = open(os.path.join(state, "operator.token")).read().strip()

        def request(method, path, body=None):
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {"Authorization": f"Bearer {token}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            return response.status, data

        last = json.loads(request("GET", "/v1/status")[1])["ledger"]["last_seq"]
        time.sleep(0.5)
        before, threads_before = rss_kib(process.pid), threads(process.pid)

        selector = selectors.DefaultSelector()
        head = (f"GET /v1/events?since={last} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                f"Authorization: Bearer {token}\r\n\r\n").encode()
        for _ in range(streams):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(head)
            sockets.append(sock)
        buffers = {}
        for sock in sockets:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise SystemExit("sse.py: a stream was closed before its head")
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"sse.py: a stream was refused: {data[:200]!r}")
            sock.setblocking(False)
            buffers[sock] = data.split(b"\r\n\r\n", 1)[1]
            selector.register(sock, selectors.EVENT_READ)
        time.sleep(1)
        after = rss_kib(process.pid)
        threads_after = threads(process.pid)

        to_last, spread, answered = [], [], []
        for index in range(appends):
            seq = last + index + 1
            marker = f"id: {seq}\n".encode()
            waiting = set(sockets)
            sent = time.monotonic()
            status, body = request("PUT", "/v1/agents/ext/desired", json.dumps({"version": f"1.{index}"}))
            answered.append((time.monotonic() - sent) * 1000)
            if status != 202:
                raise SystemExit(f"sse.py: PUT desired answered {status}: {body[:200]!r}")
            first = None
            deadline = time.monotonic() + 30
            for sock in list(waiting):
                if marker in buffers[sock]:
                    waiting.discard(sock)
                    first = first or time.monotonic()
            while waiting:
                if time.monotonic() > deadline:
                    raise SystemExit(f"sse.py: {len(waiting)} streams did not receive record {seq}")
                for key, _ in selector.select(timeout=1):
                    sock = key.fileobj
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise SystemExit("sse.py: a stream ended")
                    buffers[sock] += chunk
                    if sock in waiting and marker in buffers[sock]:
                        waiting.discard(sock)
                        first = first or time.monotonic()
            done = time.monotonic()
            to_last.append((done - sent) * 1000)
            spread.append((done - first) * 1000)
        # Every stream got every record, once, in order (keepalives aside).
        expected = [f"id: {last + index + 1}".encode() for index in range(appends)]
        for sock, data in buffers.items():
            ids = [line for line in data.split(b"\n") if line.startswith(b"id: ")]
            if ids != expected:
                raise SystemExit(f"sse.py: a stream received {ids[:5]}..., not the {appends} records in order")
        final = rss_kib(process.pid)

        print(f"streams={streams}")
        print(f"rss_before_kib={before}")
        print(f"rss_with_streams_kib={after}")
        print(f"rss_after_appends_kib={final}")
        print(f"rss_per_stream_kib={(after - before) / streams:.1f}")
        print(f"threads_before={threads_before} threads_with_streams={threads_after}")
        print(f"put_to_202_ms_p50={statistics.median(answered):.2f} max={max(answered):.2f}")
        print(f"put_to_last_stream_ms_p50={statistics.median(to_last):.2f} max={max(to_last):.2f}")
        print(f"first_to_last_stream_ms_p50={statistics.median(spread):.2f} max={max(spread):.2f}")
    finally:
        for sock in sockets:
            sock.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(state, ignore_errors=True)
    if process.returncode != 0:
        raise SystemExit(f"sse.py: batond exited {process.returncode} after SIGTERM")


if __name__ == "__main__":
    main()
