#!/usr/bin/env bash
# `make run`: serve the default model at once, and the full recipe when it is ready.
#
#   1. No model yet: train a small first model (QUICK_TRAIN_ARGS, about a minute on 2 cores), export it
#      as version 1 of the one-model repository $MODELS/$MODEL_NAME, and serve it.
#   2. Meanwhile, in the background, train the documented recipe (TRAIN_ARGS: ~10-15 min on 2 cores),
#      evaluate it (EVAL_ARGS) and export it as the next version; SIGHUP makes the service load and
#      warm it beside the first one and swap, so no request fails across the swap. Its log:
#      $RUN_DIR/make-run.log ("about N min left" on every epoch line).
#   3. Later runs serve what the repository holds at once (the full model, once it was exported).
#
# Ctrl-C stops the service and the background training alike.
set -euo pipefail

VAESERVE=${VAESERVE:-.venv/bin/vaeserve}
MODELS=${MODELS:-models}
MODEL_NAME=${MODEL_NAME:-fashion-mnist-vae}
RUN_DIR=${RUN_DIR:-runs/default}
QUICK_RUN_DIR=${QUICK_RUN_DIR:-runs/first}
QUICK_TRAIN_ARGS=${QUICK_TRAIN_ARGS:---epochs 3 --hidden 512 512 --latent-dim 20}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:---iwae-examples 1000}
ARTIFACTS=${ARTIFACTS:-artifacts}  # a link to the newest version, for `vaeserve score --artifacts artifacts`
FULL_DONE="$MODELS/$MODEL_NAME/.full-recipe-exported"  # written after the full model's export

say() { printf '[make run %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# Version folders only: an export killed half-way leaves a dot-named staging folder behind.
versions() { find "$MODELS/$MODEL_NAME" -mindepth 2 -maxdepth 2 -name manifest.json ! -path '*/.*' 2>/dev/null | wc -l; }
link_newest() {  # never over a real folder (an artifacts/ of an earlier make run stays as it was)
  local newest
  newest=$(find "$MODELS/$MODEL_NAME" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' | sort -t/ -k1 -V | tail -1)
  if [ -n "$newest" ] && { [ -L "$ARTIFACTS" ] || [ ! -e "$ARTIFACTS" ]; }; then ln -sfn "$(realpath "$newest")" "$ARTIFACTS"; fi
}
started=$(date +%s)

if [ "$(versions)" -eq 0 ]; then
  say "no model in $MODELS/$MODEL_NAME yet: training a small first model (about a minute on 2 cores), then serving it"
  # shellcheck disable=SC2086  # the *_ARGS variables are option lists, split on purpose
  "$VAESERVE" train --out "$QUICK_RUN_DIR" $QUICK_TRAIN_ARGS
  "$VAESERVE" export --checkpoint "$QUICK_RUN_DIR/best.pt" --repository "$MODELS" --name "$MODEL_NAME" \
    --version 1 >/dev/null
  say "first model exported in $(( $(date +%s) - started )) s"
fi
link_newest

"$VAESERVE" serve --repository "$MODELS" &
server=$!
trainer=""
stop() {
  [ -n "$trainer" ] && kill -- -"$trainer" 2>/dev/null || true
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" || true 2>/dev/null || true
}
trap stop EXIT INT TERM  # EXIT too: a server that fails to start must not leave the training behind

if [ ! -f "$FULL_DONE" ]; then
  mkdir -p "$RUN_DIR"
  say "training the full recipe in the background (~10-15 min on 2 cores; progress: tail -f $RUN_DIR/make-run.log);"
  say "it replaces the first model without a failed request when it is exported"
  # Its own process group, so Ctrl-C (stop) ends the training with everything it started.
  set -m
  (
    # shellcheck disable=SC2086
    "$VAESERVE" train --out "$RUN_DIR" $TRAIN_ARGS \
      && "$VAESERVE" evaluate --checkpoint "$RUN_DIR/best.pt" $EVAL_ARGS \
      && "$VAESERVE" export --checkpoint "$RUN_DIR/best.pt" --repository "$MODELS" --name "$MODEL_NAME" \
      && touch "$FULL_DONE" && link_newest \
      && kill -HUP "$server" \
      && echo "[make run] the full model is exported and loading: $(( $(date +%s) - started )) s after make run started"
  ) >"$RUN_DIR/make-run.log" 2>&1 &
  trainer=$!
  set +m
fi

wait "$server" || true
