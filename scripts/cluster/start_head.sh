#!/usr/bin/env bash
# Start the Ray head on this machine (run once, on the machine that will run `nasfpn search`).
# Every machine needs the same Python environment (`pip install -e .` of this repository) and
# the same paths for the data, the cache (NASFPN_CACHE) and the experiment folder: use shared
# storage (NFS or similar) for those, since trials read the feature cache from disk.
#   scripts/cluster/start_head.sh [PORT]
set -euo pipefail
port="${1:-6379}"
export RAY_USAGE_STATS_ENABLED=0
# Token authentication on, always: `ray start` turns it on only when a token already exists,
# and a driver or worker whose mode differs from the head's cannot run anything there.
ray get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token
ray start --head --port="$port" --include-dashboard=false
cat <<MSG

Head started, with token authentication. On each worker machine, copy ~/.ray/auth_token from
this machine to ~/.ray/auth_token there (or set RAY_AUTH_TOKEN), then:
  scripts/cluster/start_worker.sh $(hostname -I | awk '{print $1}'):$port
Then, here (auto, or this machine's HOST:PORT; either sends the token by itself):
  NASFPN_CACHE=/shared/nasfpn-cache nasfpn search --address auto --out /shared/runs/my-search
MSG
