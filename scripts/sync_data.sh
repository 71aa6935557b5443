#!/usr/bin/env bash
# Copy a dataset directory (COCO / ImageNet-100 trees, or packed stores) to this node's local disk:
#   scripts/sync_data.sh SRC DEST
# SRC is s3://bucket/prefix (synced with `aws s3 sync`; credentials from the instance profile or the usual
# AWS_* variables; AWS_ENDPOINT_URL for an S3-compatible server) or a local / NFS path (rsync).
# Incremental: a node that restarts re-lists and copies only what changed. Prints one line with the time
# and size. cluster/gpu.yaml runs it on every GPU worker before the worker joins the cluster.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 SRC DEST   (SRC: s3://bucket/prefix or a directory)" >&2
  exit 2
fi
src="$1"
dest="$2"
start=$(date +%s)
mkdir -p "$dest"
case "$src" in
  s3://*)
    if ! command -v aws >/dev/null 2>&1; then
      python3 -m pip install -q awscli >&2
    fi
    # many small JPEGs: 64 parallel requests instead of the CLI's 10, set in a copy of the AWS config
    cfg=$(mktemp)
    trap 'rm -f "$cfg"' EXIT
    cp "${AWS_CONFIG_FILE:-$HOME/.aws/config}" "$cfg" 2>/dev/null || true
    AWS_CONFIG_FILE="$cfg" aws configure set default.s3.max_concurrent_requests 64
    AWS_CONFIG_FILE="$cfg" aws s3 sync --only-show-errors "${src%/}/" "$dest/"
    ;;
  *)
    if [ ! -d "$src" ]; then
      echo "error: $src: dataset directory not found" >&2
      exit 1
    fi
    if ! command -v rsync >/dev/null 2>&1; then
      echo "error: rsync not found: install it (apt-get install rsync) to copy from a directory" >&2
      exit 1
    fi
    rsync -a "${src%/}/" "$dest/"
    ;;
esac
size=$(du -sh "$dest" | cut -f1)
echo "synced $src -> $dest: $size in $(( $(date +%s) - start )) s"
