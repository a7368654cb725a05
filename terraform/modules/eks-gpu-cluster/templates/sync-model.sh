#!/bin/sh
# Init container of every Ray pod: makes sure this node holds the model files under
# $MODEL_DIR (a hostPath on the node's NVMe), fetching them once per node. Later pods on the
# same node find the marker and start at once; a fetch cut short resumes where it stopped.
#   MODEL_SOURCE  hf | s3
#   MODEL_FILES   all (weights, for GPU workers) | tokenizer (tekken.json and the small
#                 files the router reads, for the head)
#   MODEL_REPO_ID (hf) repository id      MODEL_S3_URI (s3) s3://bucket/prefix
set -eu

: "${MODEL_DIR:?}" "${MODEL_SOURCE:?}" "${MODEL_FILES:=all}"
export MODEL_DIR MODEL_FILES
marker="$MODEL_DIR/.complete-$MODEL_FILES"
if [ -f "$MODEL_DIR/.complete-all" ] || [ -f "$marker" ]; then
  echo "model files already on this node: $MODEL_DIR"
  exit 0
fi
mkdir -p "$MODEL_DIR"

# One fetch per node at a time; a lock left by a killed pod goes stale after two hours.
lock="$MODEL_DIR/.lock"
while ! mkdir "$lock" 2>/dev/null; do
  since=$(cat "$lock/since" 2>/dev/null || echo 0)
  if [ $(( $(date +%s) - since )) -gt 7200 ]; then
    rm -rf "$lock"
    continue
  fi
  echo "another pod is fetching the model on this node; waiting"
  sleep 10
done
date +%s > "$lock/since"
trap 'rm -rf "$lock"' EXIT
if [ -f "$MODEL_DIR/.complete-all" ] || [ -f "$marker" ]; then
  exit 0
fi

# Mistral-format files only (vLLM loads params.json + consolidated.safetensors); the
# repository's Hugging Face-format shards are not fetched.
case "$MODEL_SOURCE" in
  s3)
    if [ "$MODEL_FILES" = all ]; then
      set -- --exclude '*' --include '*.json' --include '*.txt' --include 'consolidated.safetensors'
    else
      set -- --exclude '*' --include '*.json' --include '*.txt'
    fi
    echo "aws s3 sync $MODEL_S3_URI $MODEL_DIR ($MODEL_FILES)"
    aws s3 sync "$MODEL_S3_URI" "$MODEL_DIR" --only-show-errors --no-progress "$@"
    ;;
  hf)
    [ -n "${HF_TOKEN:-}" ] || unset HF_TOKEN
    echo "snapshot_download $MODEL_REPO_ID -> $MODEL_DIR ($MODEL_FILES)"
    python3 - <<'PY'
import os
from huggingface_hub import snapshot_download

patterns = ["*.json", "*.txt"]
if os.environ["MODEL_FILES"] == "all":
    patterns.append("consolidated.safetensors")
snapshot_download(repo_id=os.environ["MODEL_REPO_ID"], local_dir=os.environ["MODEL_DIR"], allow_patterns=patterns)
PY
    ;;
  *)
    echo "MODEL_SOURCE must be hf or s3, not $MODEL_SOURCE" >&2
    exit 2
    ;;
esac

test -s "$MODEL_DIR/tekken.json"
if [ "$MODEL_FILES" = all ]; then
  test -s "$MODEL_DIR/consolidated.safetensors"
fi
touch "$marker"
echo "model files ready: $MODEL_DIR"
