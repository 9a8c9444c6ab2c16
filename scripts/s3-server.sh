#!/bin/sh
# Runs a local moto S3 server with bucket haagenti-test for manual runs and benchmarks
# (the same venv `cargo xtask test` uses). Usage: scripts/s3-server.sh [PORT]; Ctrl-C stops it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/target/moto-venv"
port=${1:-9000}
if [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[s3]' flask flask-cors
fi
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$root/target/moto-server-$port.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; echo "moto S3 server stopped"' EXIT
trap 'exit 130' INT TERM
tries=0
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || { echo "moto did not start; see $root/target/moto-server-$port.log"; exit 1; }
    sleep 0.2
done
curl -s -o /dev/null -X PUT "http://127.0.0.1:$port/haagenti-test"
echo "moto S3 server started on 127.0.0.1:$port (pid $pid), bucket haagenti-test"
echo "export HAAGENTI_S3_ENDPOINT=http://127.0.0.1:$port HAAGENTI_TEST_S3_ENDPOINT=http://127.0.0.1:$port HAAGENTI_TEST_S3_BUCKET=haagenti-test AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
wait "$pid"
