#!/usr/bin/env bash
# Puts the demo agent's releases in place for `make run`:
#   <state_dir>/releases/demo/1.0, 2.0: examples/shell-agent, a working agent;
#   <state_dir>/releases/demo/3.0: the same agent with a failing self-check, to show
#   that a broken release breaks nothing;
#   <state_dir>/releases/web/1.0, 2.0: examples/http-agent (built by `make run`),
#   through a wrapper that runs the built binary.
# `current` points at 1.0 unless it already points somewhere.
#
# usage: scripts/demo-releases.sh STATE_DIR [HTTP_AGENT]
#   HTTP_AGENT: the http-agent binary (default .build/debug/http-agent)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
state=${1:?usage: $0 STATE_DIR}
releases="$state/releases/demo"

for version in 1.0 2.0 3.0; do
    bin="$releases/$version/bin"
    mkdir -p "$bin"
    install -m 0755 examples/shell-agent "$bin/shell-agent"
    if [[ $version == 3.0 ]]; then
        printf '#!/bin/sh\n# A broken release: its self-check fails.\nSHELL_AGENT_FAIL_CHECK=1 exec "$(dirname "$0")/shell-agent"\n' >"$bin/demo-agent"
    else
        printf '#!/bin/sh\nexec "$(dirname "$0")/shell-agent"\n' >"$bin/demo-agent"
    fi
    chmod 0755 "$bin/demo-agent"
done
if [[ ! -L $releases/current ]]; then
    ln -s 1.0 "$releases/current"
fi
echo "demo releases in $releases: 1.0, 2.0 (working), 3.0 (broken); current -> $(readlink "$releases/current")"

http_agent=$(realpath "${2:-.build/debug/http-agent}")
web="$state/releases/web"
for version in 1.0 2.0; do
    mkdir -p "$web/$version/bin"
    # exec keeps the pid, so LISTEN_PID (set by batond's fork) still names the agent.
    printf '#!/bin/sh
exec %q "$@"
' "$http_agent" >"$web/$version/bin/http-agent"
    chmod 0755 "$web/$version/bin/http-agent"
done
if [[ ! -L $web/current ]]; then
    ln -s 1.0 "$web/current"
fi
echo "web releases in $web: 1.0, 2.0 (examples/http-agent on 127.0.0.1:8080); current -> $(readlink "$web/current")"
