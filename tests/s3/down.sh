#!/usr/bin/env bash
# `make s3-down`: stop the MinIO that `make s3-up` started (its data stays in build/s3/data).
set -euo pipefail
state="$(cd "$(dirname "$0")/../.." && pwd)/build/s3"
if [[ -f "$state/minio.pid" ]] && kill -0 "$(cat "$state/minio.pid")" 2>/dev/null; then
  kill "$(cat "$state/minio.pid")"
  echo "stopped MinIO (pid $(cat "$state/minio.pid"))" >&2
fi
rm -f "$state/minio.pid"
