#!/usr/bin/env bash
# Puts the demo agent's releases in place for `make run`:
#   <state_dir>/releases/demo/1.0, 2.0: examples/shell-agent, a working agent;
#   <state_dir>/releases/demo/3.0: the same agent with a failing self-check, to show
#   that a broken release breaks nothing.
# `current` points at 1.0 unless it already points somewhere.
#
# usage: scripts/demo-releases.sh STATE_DIR
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
