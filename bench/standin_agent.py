#!/usr/bin/env python3
"""A stand-in for examples/http-agent in bench/peers.py: the same flags, the same answers.

usage: bench/standin_agent.py [--startup-delay S] [--bind tcp://HOST:PORT]

Answers every request with `<agent> <version> (instance <instance>, pid <pid>)` and
`Connection: close`. Standalone (no BATON_INSTANCE: under supervisord) it sleeps S
(a slow self-check), binds --bind and serves until SIGTERM; its version is its
working directory's name (the release directory it runs in). Under batond it sleeps
S, reports ready, and serves only once it holds go: on the sockets batond passed
(LISTEN_FDS, descriptors 3...) or else on --bind, bound after go. On stop it stops
accepting, closes its own listening descriptors (never shutdown()), reports stopped
and exits 0. Standard library only; connections are answered one at a time.
"""
import argparse
import http.client
import json
import os
import select
import signal
import socket
import sys
import threading
import time

REQUEST_TIMEOUT = 2.0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def parse_bind(text):
    if not text.startswith("tcp://"):
        sys.exit(f"standin-agent: --bind takes tcp://HOST:PORT, got {text!r}")
    host, _, port = text[len("tcp://"):].rpartition(":")
    return host.strip("[]"), int(port)


def bind(address):
    host, port = address
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(4096)
    return listener


def passed_listeners():
    """The descriptors batond passed the systemd way, or [] when there are none for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    return [socket.socket(fileno=3 + index) for index in range(count)]


class Server:
    """Accepts on its listeners until stop(); answers each connection before the next."""

    def __init__(self, listeners, body):
        self.listeners = listeners
        self.body = body
        self.wake_read, self.wake_write = os.pipe()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % len(self.body)) + self.body
        while True:
            ready, _, _ = select.select(self.listeners + [self.wake_read], [], [])
            if self.wake_read in ready:
                break
            for listener in ready:
                try:
                    connection, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                with connection:
                    try:
                        connection.settimeout(REQUEST_TIMEOUT)
                        head = b""
                        while b"\r\n\r\n" not in head:
                            chunk = connection.recv(4096)
                            if not chunk:
                                break
                            head += chunk
                        if head:
                            connection.sendall(answer)
                    except OSError:
                        pass
        # Stop accepting: close our own descriptors only; what is queued stays for the next holder.
        for listener in self.listeners:
            listener.close()

    def stop(self):
        os.write(self.wake_write, b"x")
        self.thread.join()


def main():
    parser = argparse.ArgumentParser(prog="standin-agent")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--bind", default=None)
    options = parser.parse_args()
    address = parse_bind(options.bind) if options.bind else None

    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    instance = os.environ.get("BATON_INSTANCE")
    agent = os.environ.get("BATON_AGENT", "http-agent")
    version = os.environ.get("BATON_VERSION") or os.path.basename(os.getcwd())
    body = f"{agent} {version} (instance {instance or '-'}, pid {os.getpid()})\n".encode()

    time.sleep(options.startup_delay)

    if instance is None:
        if address is None:
            sys.exit("standin-agent: standalone, --bind is needed")
        server = Server([bind(address)], body)
        terminated.wait()
        server.stop()
        return

    where = os.environ["BATON_SOCKET"]
    token = os.environ["BATON_TOKEN"]

    def call(method, route, timeout=40):
        connection = UnixHTTPConnection(where, timeout)
        try:
            headers = {"Authorization": f"Bearer {token}"}
            payload = None
            if method == "POST":
                headers["Content-Type"] = "application/json"
                payload = b"{}"
            connection.request(method, f"/v1/instances/{instance}/{route}", body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                sys.exit(f"standin-agent {instance}: {route}: HTTP {response.status} {data[:200]!r}")
            return json.loads(data)["signal"]
        finally:
            connection.close()

    current = call("POST", "ready")
    server = None
    while True:
        if terminated.is_set():
            current = "stop"
        if current == "go" and server is None:
            listeners = passed_listeners()
            if not listeners:
                if address is None:
                    sys.exit("standin-agent: no sockets passed and no --bind")
                listeners = [bind(address)]
            server = Server(listeners, body)
        elif current == "stop":
            if server is not None:
                server.stop()
            call("POST", "stopped")
            return
        try:
            current = call("GET", f"signal?seen={current}&wait=1", timeout=11)
        except OSError:
            time.sleep(0.1)


if __name__ == "__main__":
    main()
