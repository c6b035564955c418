#!/bin/sh
# The compose `train` service and the Kubernetes Job: train, evaluate and export the default model into
# $VAESERVE_ARTIFACTS_DIR unless a manifest is already there (the service verifies every file at load).
# TRAIN_ARGS / EVALUATE_ARGS add options to `vaeserve train` / `vaeserve evaluate`.
set -eu
artifacts="${VAESERVE_ARTIFACTS_DIR:-/artifacts}"
run_dir="${RUN_DIR:-/runs/default}"
if [ -f "$artifacts/manifest.json" ]; then
  echo "train-if-missing: $artifacts/manifest.json exists; nothing to do (empty the volume to retrain)"
  exit 0
fi
# shellcheck disable=SC2086  # the *_ARGS variables are option lists, split on purpose
vaeserve train --out "$run_dir" ${TRAIN_ARGS:-}
# shellcheck disable=SC2086
# Unset: the first 1,000 test images, as `make run` does (the published protocol on all 10,000 takes 12-25 min).
vaeserve evaluate --checkpoint "$run_dir/best.pt" ${EVALUATE_ARGS---iwae-examples 1000}
# export writes manifest.json last, so a crash above leaves no manifest and the next start retrains.
# shellcheck disable=SC2086
vaeserve export --checkpoint "$run_dir/best.pt" --out "$artifacts" ${EXPORT_ARGS:-}
echo "train-if-missing: exported to $artifacts"
