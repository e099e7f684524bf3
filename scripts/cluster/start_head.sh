#!/usr/bin/env bash
# Start the Ray head on this machine (run once, on the machine that will run `nasfpn search`).
# Every machine needs the same Python environment (`pip install -e .` of this repository) and
# the same paths for the data, the cache (NASFPN_CACHE) and the experiment folder: use shared
# storage (NFS or similar) for those, since trials read the feature cache from disk.
#   scripts/cluster/start_head.sh [PORT]
set -euo pipefail
port="${1:-6379}"
export RAY_USAGE_STATS_ENABLED=0
ray start --head --port="$port" --include-dashboard=false
cat <<MSG

Head started. On each worker machine:
  scripts/cluster/start_worker.sh $(hostname -I | awk '{print $1}'):$port
Ray's token authentication is on by default: copy ~/.ray/auth_token from this machine to each
worker (or set RAY_AUTH_TOKEN there). Then, here:
  NASFPN_CACHE=/shared/nasfpn-cache nasfpn search --address auto --out /shared/runs/my-search
MSG
