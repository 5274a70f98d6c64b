#!/usr/bin/env bash
# The several-replicas benchmark (README, "Measurements"): one 3-member etcd shared by
# kube-apiserver and three replicas of the server, on this machine; ConfigMap creates through
# kube-apiserver against claim creates through the three replicas into one parent and into 64.
#
# Usage: benches/ha-etcd.sh [CLIENTS [SECONDS]]   (release binaries: cargo build --release --bins)
# Needs ../shared/envtest (etcd, kube-apiserver). Leaves nothing running; prints the figures.
set -euo pipefail
CLIENTS=${1:-48}
SECONDS_EACH=${2:-12}
HERE=$(cd "$(dirname "$0")/.." && pwd)
ENVTEST=$HERE/../shared/envtest
BIN=$HERE/target/release
export KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-$(bash "$ENVTEST/assets.sh")}
W=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  bash "$ENVTEST/stop-cluster.sh" "$W/cluster" >/dev/null 2>&1 || true
  bash "$ENVTEST/stop-etcd-cluster.sh" "$W/etcd" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

# CPU seconds (user+system, in 10 ms ticks) of the given pids.
cpu() {
  local t=0
  for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
# phase NAME CMD...: run one load and say where the machine's CPU went meanwhile, per create.
phase() {
  local name=$1; shift
  local e0 k0 r0 e1 k1 r1 out ok
  e0=$(cpu $EPIDS); k0=$(cpu "$KPID"); r0=$(cpu "${pids[@]}")
  out=$("$@")
  e1=$(cpu $EPIDS); k1=$(cpu "$KPID"); r1=$(cpu "${pids[@]}")
  echo "$out" | grep -E "^(mode|throughput|server cpu)"
  ok=$(echo "$out" | grep '^mode=' | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  [[ ${ok:-0} -gt 0 ]] || return 0
  echo "cpu per create ($name): etcd (3 members) $(( (e1-e0)*10000/ok )) us," \
    "kube-apiserver $(( (k1-k0)*10000/ok )) us, replicas $(( (r1-r0)*10000/ok )) us"
}

ETCD_BASE_PORT=${ETCD_BASE_PORT:-24790} bash "$ENVTEST/start-etcd-cluster.sh" "$W/etcd" 3 >/dev/null
# shellcheck disable=SC1091
source "$W/etcd/env"
ETCD_SERVERS=$ETCD_SERVERS bash "$ENVTEST/start-cluster.sh" "$W/cluster" >/dev/null
EPIDS="$(cat $W/etcd/member-*.pid | tr '\n' ' ')"
KPID=$(pgrep -f "kube-apiserver.*$W/cluster" | head -1)
KUBECTL="kubectl --kubeconfig $W/cluster/kubeconfig"
$KUBECTL create namespace load >/dev/null

servers=()
for i in 0 1 2; do
  d=$W/r$i
  mkdir -p "$d"
  [[ $i == 0 ]] || cp -r "$W/r0/pki" "$d/"
  port=$((18443 + i))
  "$BIN/ipam-apiserver" serve --standalone --data-dir "$d" --secure-port "$port" \
    --etcd-servers "$ETCD_SERVERS" --etcd-compaction-interval 0 >"$W/r$i.log" 2>&1 &
  pids+=($!)
  servers+=("https://127.0.0.1:$port")
  for _ in $(seq 1 100); do
    curl -sk --cert "$d/pki/admin.crt" --key "$d/pki/admin.key" "https://127.0.0.1:$port/readyz" 2>/dev/null | grep -q ok && break
    sleep 0.1
  done
done
all=$(IFS=,; echo "${servers[*]}")
pidargs=()
for p in "${pids[@]}"; do pidargs+=(--server-pid "$p"); done

echo "== machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== ConfigMap creates through kube-apiserver, $CLIENTS clients"
phase configmap "$BIN/ipam-load" --data-dir "$W/cluster" --server https://127.0.0.1:6443 --mode configmap \
  --namespace load --clients "$CLIENTS" --duration "$SECONDS_EACH" --server-pid 0
echo "== claim creates through 3 replicas into one parent, $CLIENTS clients"
phase one "$BIN/ipam-load" --data-dir "$W/r0" --server "$all" "${pidargs[@]}" --mode create \
  --clients "$CLIENTS" --duration "$SECONDS_EACH" --namespace one
echo "== claim creates through 3 replicas into 64 parents, $CLIENTS clients"
phase many "$BIN/ipam-load" --data-dir "$W/r0" --server "$all" "${pidargs[@]}" --mode create \
  --clients "$CLIENTS" --duration "$SECONDS_EACH" --parents 64 --parent many \
  --parent-prefix fd00:64::/64 --namespace many
for i in 0 1 2; do
  curl -sk --cert "$W/r0/pki/admin.crt" --key "$W/r0/pki/admin.key" "${servers[$i]}/metrics" \
    | grep -E "^ipam_store_commit_batch_size_(sum|count)" | tr '\n' ' '
  echo "(replica $i: creates per etcd transaction = sum/count)"
done
