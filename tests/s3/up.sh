#!/usr/bin/env bash
# `make s3-up`: the pinned MinIO on 127.0.0.1:${S3_PORT:-9000}, data in build/s3/data, with
# the bucket ${S3_BUCKET:-raykube}; prints the AWS_* lines to export (also in build/s3/env).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
port="${S3_PORT:-9000}"
user="${MINIO_ROOT_USER:-raykube}"
password="${MINIO_ROOT_PASSWORD:-raykube-secret}"
bucket="${S3_BUCKET:-raykube}"
state="$root/build/s3"
mkdir -p "$state/data"
if [[ -f "$state/minio.pid" ]] && kill -0 "$(cat "$state/minio.pid")" 2>/dev/null; then
  echo "MinIO already running (pid $(cat "$state/minio.pid")); settings in $state/env" >&2
  cat "$state/env"; exit 0
fi
MINIO_ROOT_USER="$user" MINIO_ROOT_PASSWORD="$password" MINIO_BROWSER=off MINIO_UPDATE=off \
  MINIO_CALLHOME_ENABLE=off nohup "$root/build/bin/minio" server --quiet \
  --address "127.0.0.1:$port" --console-address "127.0.0.1:$((port + 1))" "$state/data" \
  >"$state/minio.log" 2>&1 &
echo $! >"$state/minio.pid"
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/minio/health/ready" >/dev/null 2>&1 && break
  kill -0 "$(cat "$state/minio.pid")" 2>/dev/null || { cat "$state/minio.log" >&2; exit 1; }
  sleep 0.2
done
cat >"$state/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$user
export AWS_SECRET_ACCESS_KEY=$password
export AWS_REGION=us-east-1
ENV
# Create the bucket through the S3 API (pyarrow, from the project's .venv).
"${PYTHON:-$root/.venv/bin/python}" - "$port" "$user" "$password" "$bucket" <<'PY'
import sys
import pyarrow.fs as pafs
port, user, password, bucket = sys.argv[1:]
fs = pafs.S3FileSystem(access_key=user, secret_key=password, region="us-east-1", scheme="http",
                       endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True)
fs.create_dir(bucket)
PY
echo "MinIO on http://127.0.0.1:$port (pid $(cat "$state/minio.pid")), bucket s3://$bucket; use it with:" >&2
echo "  source $state/env" >&2
cat "$state/env"
