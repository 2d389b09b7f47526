#!/usr/bin/env bash
# WebRTC through a lossy, jittery network: the server in its own network namespace behind a veth
# pair whose both ends run netem (5% loss, 0-50 ms jitter each way by default), the bench's WebRTC
# callers outside. Needs root, iproute2 and a kernel with sch_netem (CONFIG_NET_SCH_NETEM).
#
#   sudo bench/netem_webrtc.sh [CONFIG] [extra bench arguments...]
#   LOSS=5% JITTER=50ms CALLERS=1 sudo bench/netem_webrtc.sh configs/default.yaml --max-turns 6
#
# The report (bench/out/...) has the gap metrics (max gap, gaps > 100 ms) and unanswered turns;
# compare with the same run without netem. Where netem is missing (this dev machine: "Error:
# Specified qdisc kind is unknown." from `tc qdisc add ... netem`, CONFIG_NET_SCH_NETEM is not set),
# the same impairment is applied in user space at the callers' sockets instead:
#   STEP_BENCH_IMPAIR="loss=0.05,jitter_ms=50" .venv/bin/python -m bench --transport webrtc ...
# (bench/impair.py; tests/test_faults.py runs a call through it).
set -euo pipefail
CONFIG=${1:-configs/fake.yaml}; shift || true
LOSS=${LOSS:-5%}; JITTER=${JITTER:-50ms}; CALLERS=${CALLERS:-1}
NS=step-netem; HOST_IF=stepnet0; NS_IF=stepnet1; HOST_IP=10.77.0.1; NS_IP=10.77.0.2; PORT=${PORT:-8090}
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, tc)"; exit 2; }
command -v ip >/dev/null && command -v tc >/dev/null || { echo "needs iproute2 (ip, tc)"; exit 2; }

cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add "$HOST_IP/24" dev "$HOST_IF" && ip link set "$HOST_IF" up
ip netns exec "$NS" ip addr add "$NS_IP/24" dev "$NS_IF"
ip netns exec "$NS" ip link set "$NS_IF" up
ip netns exec "$NS" ip link set lo up
# Uniform jitter (delay 0 ± JITTER is not allowed; delay J/2 ± J/2 gives 0..J), reordering allowed.
HALF=$(( ${JITTER%ms} / 2 ))ms
if ! tc qdisc add dev "$HOST_IF" root netem loss "$LOSS" delay "$HALF" "$HALF"; then
  echo "netem is not available in this kernel (see the comment at the top for the user-space way)"; exit 3
fi
ip netns exec "$NS" tc qdisc add dev "$NS_IF" root netem loss "$LOSS" delay "$HALF" "$HALF"

# The server binds the namespace's address: its ICE host candidate is reachable through the veth
# only. Auth off: only this script's callers can reach the namespace.
ip netns exec "$NS" .venv/bin/step-realtime serve --config "$CONFIG" --host "$NS_IP" --port "$PORT" \
  --set server.auth.enabled=false --log-level warning &
SERVER_PID=$!
for _ in $(seq 1 600); do
  curl -sf "http://$NS_IP:$PORT/readyz" >/dev/null && break
  sleep 0.5
done
.venv/bin/python -m bench --url "http://$NS_IP:$PORT" --transport webrtc --concurrency "$CALLERS" \
  --no-warmup "$@"
