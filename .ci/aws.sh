#!/usr/bin/env bash
# Starts the AWS stand-ins the imaging tests use, on loopback: s3s-fs (a real S3 server over a
# directory, SigV4-checked) and the moto emulator (KMS; its S3 keeps storage classes, which
# s3s-fs refuses, for the tiering test). Prints the environment the tests read, for `eval`.
# Usage: eval "$(.ci/aws.sh)"   (free ports are chosen; pass two ports to fix them)
set -euo pipefail
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3_port=${1:-$(free_port)}
moto_port=${2:-$(free_port)}
dir=$(mktemp -d /tmp/clinic-aws.XXXXXX)
mkdir -p "$dir/s3"
for port in "$s3_port" "$moto_port"; do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "port $port is already in use" >&2
    exit 1
  fi
done
nohup s3s-fs --host 127.0.0.1 --port "$s3_port" --access-key clinic-test \
  --secret-key clinic-test-secret "$dir/s3" >"$dir/s3s-fs.log" 2>&1 &
s3_pid=$!
nohup moto_server -H 127.0.0.1 -p "$moto_port" >"$dir/moto.log" 2>&1 &
moto_pid=$!
for pair in "$s3_port:$s3_pid" "$moto_port:$moto_pid"; do
  port=${pair%%:*} pid=${pair##*:}
  for _ in $(seq 1 60); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then break; fi
    sleep 0.5
  done
  # The server that answers must be the one started here, still running.
  if ! kill -0 "$pid" 2>/dev/null || ! curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "the server on port $port did not start (logs in $dir)" >&2
    exit 1
  fi
done
echo "export TEST_S3_URL=http://127.0.0.1:$s3_port TEST_MOTO_URL=http://127.0.0.1:$moto_port TEST_S3_ACCESS_KEY=clinic-test TEST_S3_SECRET_KEY=clinic-test-secret"
