#!/usr/bin/env bash
# Join a worker machine to the Ray head:  scripts/cluster/start_worker.sh HEAD_IP:PORT
# Needs the head's token: its ~/.ray/auth_token copied to ~/.ray/auth_token here, or RAY_AUTH_TOKEN.
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: $0 HEAD_IP:PORT" >&2; exit 2; fi
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  echo "$0: no Ray auth token here: copy the head's ~/.ray/auth_token to ~/.ray/auth_token first" >&2
  exit 2
fi
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token
ray start --address="$1"
