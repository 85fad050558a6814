#!/usr/bin/env python3
"""A slow-header flood against batond while an agent hands over.

usage: bench/flood.py BATOND TESTAGENT [--target tcp|unix|both|all] [--count N]
                      [--seconds S] [--max-connections M] [--parked-events P]

Starts batond on a fresh state directory with agent `bench` (releases `a`, `b` of
baton-testagent), then opens COUNT connections to each target listener (`all`
adds the agent socket to TCP and the control socket) that send
half a request head and then one more header byte every 2 s (a slowloris), never
finishing the head. While they are open it:
  - asks GET /healthz on a new TCP connection in a loop (1 s timeout each) and
    prints the answers per second,
  - hands the agent over from `a` to `b` and prints the handoff's outcome and time,
  - prints how many flood connections the server has closed so far.
With --parked-events P it first parks P `GET /v1/events?wait=300` long-polls on the
TCP listener and prints how many got parked and how many were refused.

Nothing is sent anywhere but loopback and the state directory's sockets.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import resource


def request(target, method, path, token=None, body=None, timeout=5.0):
    """One request on a new connection; returns (status, body) or raises."""
    kind, address = target
    sock = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
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
        status = int(received.split(b" ", 2)[1])
        return status, received.split(b"\r\n\r\n", 1)[1]
    finally:
        sock.close()


class Flood:
    """COUNT half-open heads on one listener, a header byte every 2 s."""

    def __init__(self, target, count):
        self.target, self.sockets, self.closed, self.refused = target, [], 0, 0
        kind, address = target
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(1)
            connected, give_up = False, time.time() + 1
            while not connected and time.time() < give_up:
                try:
                    sock.connect(address)
                    connected = True
                except BlockingIOError:  # a Unix socket's backlog is full: try again
                    time.sleep(0.01)
                except OSError:
                    break
            if not connected:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
            self.sockets.append(sock)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.trickle, daemon=True)
        self.thread.start()

    def trickle(self):
        while not self.stop.wait(2.0):
            alive = []
            for sock in self.sockets:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed += 1
                    sock.close()
                    continue
                try:
                    sock.send(b"X")
                    alive.append(sock)
                except BlockingIOError:
                    alive.append(sock)
                except OSError:
                    self.closed += 1
                    sock.close()
            self.sockets = alive

    def close(self):
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("batond")
    parser.add_argument("testagent")
    parser.add_argument("--target", default="tcp", choices=["tcp", "unix", "both", "all"])
    parser.add_argument("--count", type=int, default=1100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-connections", type=int, default=1000)
    parser.add_argument("--parked-events", type=int, default=0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    state = tempfile.mkdtemp(prefix="baton-flood.")
    for release in ("a", "b"):
        bin_dir = os.path.join(state, "releases", "bench", release, "bin")
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, "agent"), "w") as script:
            script.write(f"#!/bin/sh\nexec '{os.path.abspath(args.testagent)}'\n")
        os.chmod(os.path.join(bin_dir, "agent"), 0o755)
    os.symlink("a", os.path.join(state, "releases", "bench", "current"))
    config = os.path.join(state, "batond.toml")
    with open(config, "w") as handle:
        handle.write(f'[http]\nmax_connections = {args.max_connections}\n'
                     '[agents.bench]\ncommand = ["{release}/bin/agent"]\nready_timeout = "10s"\n'
                     'stop_timeout = "5s"\nkill_timeout = "2s"\n')
    daemon = subprocess.Popen([args.batond, "--config", config, "--state-dir", state, "--socket", state + "/batond.sock",
                               "--listen", "127.0.0.1:0", "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    floods, parked = [], []
    try:
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(state, "batond.addr")):
            if time.time() > deadline:
                raise SystemExit("batond did not start")
            time.sleep(0.05)
        host, port = open(os.path.join(state, "batond.addr")).read().strip().rsplit(":", 1)
        tcp, unix = ("tcp", (host, int(port))), ("unix", state + "/batond.sock")
        token = open(os.path.join(state, "operator.token")).read().strip()
        while True:
            status, body = request(tcp, "GET", "/v1/agents/bench", token)
            if json.loads(body).get("state") == "running":
                break
            time.sleep(0.1)

        if args.parked_events:
            refused = hung = 0
            for _ in range(args.parked_events):
                try:
                    sock = socket.create_connection(tcp[1], timeout=1)
                except OSError:
                    hung += 1  # not accepted within 1 s: left in the listen backlog
                    continue
                sock.sendall(f"GET /v1/events?since=999999&wait=300 HTTP/1.1\r\nHost: x\r\n"
                             f"Authorization: Bearer {token}\r\n\r\n".encode())
                parked.append(sock)
            time.sleep(1)
            first_answer = None
            for sock in parked:
                sock.setblocking(False)
                try:
                    answer = sock.recv(65536)
                    if answer:
                        refused += 1
                        first_answer = first_answer or answer.split(b"\r\n", 1)[0].decode()
                except BlockingIOError:
                    pass
                except OSError:
                    refused += 1
            print(f"parked events: {args.parked_events} sent, {len(parked) - refused} parked, "
                  f"{refused} answered or closed at once ({first_answer}), {hung} not connected within 1 s")

        agent = ("unix", state + "/agent.sock")
        targets = {"tcp": [tcp], "unix": [unix], "both": [tcp, unix], "all": [tcp, unix, agent]}[args.target]
        started = time.time()
        for target in targets:
            floods.append(Flood(target, args.count))
        print(f"flood: {args.count} slow heads on {', '.join(str(t[1]) for t in targets)} "
              f"in {time.time() - started:.1f} s; refused at connect: {sum(f.refused for f in floods)}")

        handoff = {}

        operator = unix if args.target == "tcp" else tcp

        def hand_over():
            began = time.time()
            try:
                status, body = request(operator, "PUT", "/v1/agents/bench/desired", token, '{"version":"b"}', timeout=60)
                if status != 202:
                    handoff["result"] = f"PUT desired: {status} {body[:200]!r}"
                    return
                handoff_id = json.loads(body)["id"]
                while time.time() - began < 60:
                    status, body = request(operator, "GET", f"/v1/handoffs/{handoff_id}", token, timeout=60)
                    view = json.loads(body)
                    if view.get("outcome"):
                        handoff["result"] = f"{view['outcome']} in {time.time() - began:.2f} s {view.get('error') or ''}"
                        return
                    time.sleep(0.1)
                handoff["result"] = "did not end in 60 s"
            except Exception as error:  # noqa: BLE001 - reported as the figure
                handoff["result"] = f"error after {time.time() - began:.1f} s: {error}"

        handoff_thread = threading.Thread(target=hand_over, daemon=True)
        handoff_thread.start()
        end = time.time() + args.seconds
        while time.time() < end:
            second = time.time() + 1
            answered = failed = 0
            while time.time() < second:
                try:
                    status, _ = request(tcp, "GET", "/healthz", timeout=1)
                    answered += status == 200
                    failed += status != 200
                except OSError:
                    failed += 1
                except ConnectionError:
                    failed += 1
            print(f"t={args.seconds - (end - time.time()):5.1f}s  /healthz ok {answered:5d}/s  failed {failed:3d}  "
                  f"flood closed by server {sum(f.closed for f in floods):5d}")
        handoff_thread.join(timeout=60)
        print(f"handoff: {handoff.get('result', 'still running')}")
    finally:
        for flood in floods:
            flood.close()
        for sock in parked:
            sock.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
