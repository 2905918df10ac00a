#!/usr/bin/env bash
# Usage: collect/launch.sh N --config configs/collect/<name>.yaml [overrides...]
# One process per GPU (or N CPU processes with gloo); each rank writes its own shards.
set -euo pipefail
n=${1:?number of processes}; shift
exec python -m torch.distributed.run --standalone --nproc-per-node "$n" -m hazard.cli collect "$@"
