#!/usr/bin/env python3
"""`make bench`: pushing a release to batond against `cp` of the same file.

usage: bench/push.py BATOND [SIZE_MB] [ROUNDS]

Starts batond on a temporary state directory (on TMPDIR's disk), makes a
SIZE_MB executable (a `#!` line, then random bytes) and, ROUNDS times each,
measures:
  - `PUT /v1/releases/web/<n>?sha256=...` with curl over loopback TCP, from the
    first byte sent to the 201 (streamed to disk, hashed, fsync'd, recorded in
    the ledger, renamed into place);
  - `cp FILE DIR/` into the same state directory, then `cp` followed by
    `sync -f` (cp alone does not make the copy durable; batond's push does),
    then `sha256sum` + `cp` + `sync -f` (what a careful copy does: batond's
    push checks the digest too).
Prints the medians in MB/s and the ratios.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import hashlib


def main():
    batond = os.path.abspath(sys.argv[1])
    size_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    state = tempfile.mkdtemp(prefix="baton-bench-push.")
    config = os.path.join(state, "batond.toml")
    with open(config, "w") as handle:
        handle.write('[agents.web]\ncommand = ["{release}/bin/web"]\n[releases]\nkeep_releases = 0\n')
    artifact = os.path.join(state, "artifact")
    with open(artifact, "wb") as handle:
        handle.write(b"#!/bin/sh\nexit 0\n")
        for _ in range(size_mb):
            handle.write(os.urandom(1 << 20))
    size = os.path.getsize(artifact)
    digest = hashlib.sha256(open(artifact, "rb").read()).hexdigest()

    process = subprocess.Popen([batond, "--state-dir", state, "--socket", os.path.join(state, "batond.sock"),
                                "--listen", "127.0.0.1:0", "--config", config, "--log-level", "warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address_file = os.path.join(state, "batond.addr")
        deadline = time.monotonic() + 30
        while not os.path.exists(address_file) or not open(address_file).read().strip():
            if time.monotonic() > deadline:
                sys.exit("bench: batond did not start")
            time.sleep(0.05)
        address = [line for line in open(address_file).read().split() if not line.startswith("unix:")][0]
        token = open(os.path.join(state, "operator.token")).read().strip()

        pushes, copies, synced, checked = [], [], [], []
        for round in range(rounds):
            start = time.monotonic()
            result = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                                     "-H", f"Authorization: Bearer {token}", "-H", "Expect:",
                                     "--data-binary", f"@{artifact}",
                                     f"http://{address}/v1/releases/web/{round}.0?sha256={digest}"],
                                    capture_output=True, text=True)
            pushes.append(time.monotonic() - start)
            if result.stdout != "201":
                sys.exit(f"bench: push answered {result.stdout}")
            target = os.path.join(state, f"copy-{round}")
            start = time.monotonic()
            subprocess.run(["cp", artifact, target], check=True)
            copies.append(time.monotonic() - start)
            os.unlink(target)
            start = time.monotonic()
            subprocess.run(["cp", artifact, target], check=True)
            subprocess.run(["sync", "-f", target], check=True)
            synced.append(time.monotonic() - start)
            os.unlink(target)
            start = time.monotonic()
            subprocess.run(["sha256sum", artifact], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["cp", artifact, target], check=True)
            subprocess.run(["sync", "-f", target], check=True)
            checked.append(time.monotonic() - start)
            os.unlink(target)

        def rate(seconds):
            return size / (1 << 20) / statistics.median(seconds)

        push, cp, cp_sync, careful = rate(pushes), rate(copies), rate(synced), rate(checked)
        print(f"push of a {size >> 20} MiB executable, median of {rounds}:")
        print(f"  batond PUT        {push:8.1f} MB/s   ({statistics.median(pushes) * 1000:.0f} ms)")
        print(f"  cp                {cp:8.1f} MB/s   ({statistics.median(copies) * 1000:.0f} ms)   push/cp = {push / cp:.2f}x")
        print(f"  cp + sync -f      {cp_sync:8.1f} MB/s   ({statistics.median(synced) * 1000:.0f} ms)   push/(cp+sync) = {push / cp_sync:.2f}x")
        print(f"  sha256sum+cp+sync {careful:8.1f} MB/s   ({statistics.median(checked) * 1000:.0f} ms)   push/that = {push / careful:.2f}x")
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
