#!/usr/bin/env bash
# Installs what baton needs on a Debian 12 machine, and only what is missing.
# Each level includes the one before:
#   run:   building and running batond and the demo agent (`make run`):
#          pkg-config, libmicrohttpd-dev, libarchive-dev, libcurl4-openssl-dev, curl
#   test:  the test suite (`make test`, the default): xz-utils and zstd (release
#          archives), systemd (systemd-analyze, systemd-socket-activate), chromium
#          (headless, for the status page's test), promtool,
#          python3 with PyYAML and jsonschema (scripts/check-contract.py), and a
#          virtualenv .build-venv/ with the Python tools of
#          scripts/requirements-test.txt, pinned (schemathesis, for scripts/schemathesis.sh)
#   bench: `make bench`: wrk, gcc, and a virtualenv .build-bench-venv/ with the
#          Python tools of scripts/requirements-bench.txt, pinned (supervisor, for
#          bench/peers.py)
# promtool: Debian 12 ships it only inside the `prometheus` package, which also
# pulls ~100 MB of web assets, creates a user and enables and starts a Prometheus
# server on :9090. So the package is downloaded (`apt-get download`), never
# installed: its promtool (a Go binary needing only libc) is extracted to
# /usr/local/bin/promtool. Nothing runs, no unit is enabled, dpkg does not track it.
# A no-op when everything is there: it only asks dpkg-query and PATH, and
# touches apt (one `apt-get update`, one `apt-get install`) only when a
# package is missing, and pip only when the virtualenv is missing or was made
# from other requirements. Swift is checked, never installed (swift.org toolchain).
#
# usage: scripts/install-deps.sh [run|test|bench]   (--bench: the same as bench)
set -euo pipefail

usage() { echo "usage: $0 [run|test|bench]" >&2; exit 64; }

level=test
case "$#:${1:-}" in
    0:) ;;
    1:run|1:test|1:bench) level=$1 ;;
    1:--bench) level=bench ;;
    1:-h|1:--help) echo "usage: $0 [run|test|bench]"; exit 0 ;;
    *) usage ;;
esac
test=0 bench=0
[[ $level == run ]] || test=1
[[ $level == bench ]] && bench=1

missing=()

# need_cmd PACKAGE COMMAND...: PACKAGE is missing when any COMMAND is not on PATH.
need_cmd() {
    local pkg=$1; shift
    local c
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1; then
            missing+=("$pkg")
            return
        fi
    done
}

# need_pkg PACKAGE: for packages that ship no command (headers, .pc files).
need_pkg() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)
    # "ii " is installed and configured; anything else means (re)install.
    if [[ $status != ii* ]]; then
        missing+=("$1")
    fi
}

# run: build, and the demo agent (examples/shell-agent speaks the protocol with curl)
need_cmd pkg-config pkg-config
need_pkg libmicrohttpd-dev
need_pkg libarchive-dev
need_pkg libcurl4-openssl-dev
need_cmd curl curl
python_modules_missing=0
promtool_missing=0
if (( test )); then
    need_cmd xz-utils xz
    need_cmd zstd zstd
    need_cmd systemd systemd-analyze systemd-socket-activate
    need_cmd chromium chromium  # headless, for the status page test (StatusPageTests)
    # A real etcd cluster for the fleet's tests (members run by hand, not the package's service).
    need_cmd etcd-server etcd
    need_cmd etcd-client etcdctl
    need_cmd openssl openssl  # certificates for the etcd client's TLS tests
    command -v promtool >/dev/null 2>&1 || promtool_missing=1
    # The contract check needs two Python modules. Debian's python3 takes them from
    # apt; another python3 on PATH (pyenv, a venv) from PyPI, after apt is done.
    need_cmd python3 python3
    if ! python3 -c 'import yaml, jsonschema' >/dev/null 2>&1; then
        if [[ $(command -v python3 || true) == /usr/bin/python3 ]]; then
            missing+=(python3-yaml python3-jsonschema)
        else
            python_modules_missing=1
        fi
    fi
    # The virtualenv needs the venv module (and its ensurepip), which Debian ships
    # apart, in python3-venv.
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && [[ $(command -v python3 || true) == /usr/bin/python3 ]]; then
        missing+=(python3-venv)
    fi
fi
if (( bench )); then
    need_cmd wrk wrk
    need_cmd gcc gcc
fi

if (( ${#missing[@]} || promtool_missing )); then
    wanted=("${missing[@]}")
    (( promtool_missing )) && wanted+=("promtool (from the prometheus package, not installed)")
    echo "install-deps: missing: ${wanted[*]}" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: apt-get not found; install these by hand: ${wanted[*]}" >&2
        exit 1
    fi
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        # `env` rather than `sudo VAR=...`: sudoers may forbid setting
        # variables on sudo's own command line.
        as_root=(sudo)
    else
        echo "install-deps: need root to install ${wanted[*]}: run as root or install sudo" >&2
        exit 1
    fi
    apt_get=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
    "${apt_get[@]}" update
    if (( ${#missing[@]} )); then
        "${apt_get[@]}" install -y --no-install-recommends "${missing[@]}"
    fi
    if (( promtool_missing )); then
        deb_dir=$(mktemp -d)
        trap 'rm -rf "$deb_dir"' EXIT
        # As root, apt downloads as the user _apt: let it write there.
        if [[ $(id -u) -eq 0 ]]; then chown _apt "$deb_dir" 2>/dev/null || true; fi
        (cd "$deb_dir" && apt-get download prometheus)
        dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb | tar -x -C "$deb_dir" ./usr/bin/promtool
        "${as_root[@]}" install -m 0755 "$deb_dir/usr/bin/promtool" /usr/local/bin/promtool
        echo "install-deps: installed /usr/local/bin/promtool ($(/usr/local/bin/promtool --version 2>&1 | head -n 1))" >&2
    fi
fi

if (( python_modules_missing )); then
    echo "install-deps: installing PyYAML and jsonschema for $(command -v python3)" >&2
    python3 -m pip install --quiet pyyaml jsonschema
fi

# The test tools from PyPI, pinned, in a virtualenv of the work tree (ignored by git):
# rebuilt when scripts/requirements-test.txt changes.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.build-venv
if (( test )) && ! cmp -s scripts/requirements-test.txt "$venv/requirements-test.txt" 2>/dev/null; then
    echo "install-deps: installing scripts/requirements-test.txt into $venv/" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
    cp scripts/requirements-test.txt "$venv/requirements-test.txt"
fi
bench_venv=.build-bench-venv
if (( bench )) && ! cmp -s scripts/requirements-bench.txt "$bench_venv/requirements-bench.txt" 2>/dev/null; then
    echo "install-deps: installing scripts/requirements-bench.txt into $bench_venv/" >&2
    rm -rf "$bench_venv"
    python3 -m venv "$bench_venv"
    "$bench_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt
    cp scripts/requirements-bench.txt "$bench_venv/requirements-bench.txt"
fi

if ! command -v swift >/dev/null 2>&1; then
    cat >&2 <<'EOF'
install-deps: `swift` is not on PATH.
  baton needs a Swift 6 toolchain; install it from https://www.swift.org/install/linux/
  (or with swiftly) and put its usr/bin on PATH. This script does not install Swift.
EOF
    exit 1
fi
