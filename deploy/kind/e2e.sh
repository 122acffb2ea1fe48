#!/usr/bin/env bash
# End-to-end on a real (kind) cluster: builds the images, installs Shunt with the kind overlay,
# deploys the demo's three-tier app plus a sandbox for key pr-42, and checks that keyed requests
# reach the sandbox while unkeyed (and other-keyed) ones stay on the baseline, before and after
# a rolling restart of the agent. Deletes the cluster at the end, pass or fail
# (KEEP_CLUSTER=1 keeps it for debugging).
#
# Needs: docker (with BuildKit), kind, kubectl, jq. Run from anywhere:
#   deploy/kind/e2e.sh
set -euo pipefail

cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-shunt-e2e}
AGENT_IMAGE=shunt:e2e            # must match deploy/overlays/kind
APP_IMAGE=shunt-demo-app:e2e     # must match deploy/kind/demo.yaml
NS=shop
KEY=pr-42

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\033[31mFAIL: %s\033[0m\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl jq; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

kc() { kubectl --context "kind-$CLUSTER" "$@"; }

diagnose() {
  step "diagnostics"
  kc get nodes -o wide || true
  kc get pods -A -o wide || true
  kc -n shunt-system describe daemonset shunt || true
  kc -n shunt-system logs -l app.kubernetes.io/name=shunt --tail=200 --prefix || true
  kc -n "$NS" get sandboxroutes -o yaml || true
  kc -n "$NS" logs -l app=frontend --tail=50 --prefix || true
}

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    diagnose
  fi
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    echo "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap cleanup EXIT

step "images"
docker build -t "$AGENT_IMAGE" .
docker build --target demo-app -t "$APP_IMAGE" .

step "cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --config deploy/kind/cluster.yaml --wait 120s
# The agent pins its maps on the node's bpffs and never mounts one itself. Hosts mount it at boot
# (systemd); kind's nodes are containers, where systemd skips that mount.
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
done
kind load docker-image --name "$CLUSTER" "$AGENT_IMAGE" "$APP_IMAGE"

step "install Shunt (deploy/overlays/kind)"
kc apply -k deploy/overlays/kind
# The two Secrets an installer creates (deploy/README.md): the debug token the agents and the
# traffic API share, and the traffic API's serving certificate. Pods wait for them.
kc -n shunt-system create secret generic shunt-debug-token \
  --from-literal=token="$(openssl rand -hex 32)"
tls_dir=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=shunt-traffic-api.shunt-system.svc \
  -addext subjectAltName=DNS:shunt-traffic-api.shunt-system.svc \
  -keyout "$tls_dir/tls.key" -out "$tls_dir/tls.crt" 2>/dev/null
kc -n shunt-system create secret tls shunt-traffic-api-tls \
  --cert "$tls_dir/tls.crt" --key "$tls_dir/tls.key"
rm -rf "$tls_dir"
kc wait --for condition=Established crd/sandboxroutes.shunt.dev --timeout=60s
kc -n shunt-system rollout status daemonset/shunt --timeout=180s
kc -n shunt-system rollout status deployment/shunt-traffic-api --timeout=120s
nodes=$(kc get nodes --no-headers | wc -l)
ready=$(kc -n shunt-system get daemonset shunt -o jsonpath='{.status.numberReady}')
[[ "$ready" == "$nodes" ]] || fail "agent ready on $ready of $nodes nodes"

step "demo app and sandbox $KEY"
kc apply -f deploy/kind/demo.yaml
for d in ratings reviews-v1 reviews-v2 frontend; do
  kc -n "$NS" rollout status "deployment/$d" --timeout=120s
done
kc -n "$NS" wait --for condition=Ready "sandboxroute/$KEY" --timeout=90s
kc -n "$NS" get sandboxroutes

FRONTEND=$(kc -n "$NS" get service frontend -o jsonpath='{.spec.clusterIP}'):9080

# One request from inside the frontend pod (captured like any pod on its node); prints the
# version of reviews that served it, or "error".
reviews_version() {
  local out
  if out=$(kc -n "$NS" exec deploy/frontend -- /usr/local/bin/demo-app get "http://$FRONTEND/" "$@" 2>&1); then
    jq -r '.downstream.version // "error"' <<<"$out" 2>/dev/null || echo error
  else
    echo "error: $out" | tr '\n' ' ' >&2
    echo error
  fi
}

# Waits until keyed requests reach the sandbox (the agents apply routes asynchronously).
wait_steered() {
  for _ in $(seq 1 60); do
    [[ "$(reviews_version -H "baggage: sd-routing-key=$KEY")" == v2 ]] && return 0
    sleep 2
  done
  fail "keyed requests never reached the sandbox"
}

check_routing() {
  local label=$1 v out
  for i in $(seq 1 10); do
    v=$(reviews_version -H "baggage: sd-routing-key=$KEY")
    [[ "$v" == v2 ]] || fail "$label: keyed request $i served by reviews $v, expected the sandbox (v2)"
    v=$(reviews_version)
    [[ "$v" == v1 ]] || fail "$label: unkeyed request $i served by reviews $v, expected the baseline (v1)"
    v=$(reviews_version -H "baggage: sd-routing-key=pr-43")
    [[ "$v" == v1 ]] || fail "$label: request with another key ($i) served by reviews $v, expected v1"
  done
  # The sandbox propagated the key and still reached the (baseline) ratings.
  out=$(kc -n "$NS" exec deploy/frontend -- /usr/local/bin/demo-app get "http://$FRONTEND/" \
    -H "baggage: sd-routing-key=$KEY")
  [[ "$(jq -r '.downstream.downstream.service' <<<"$out")" == ratings ]] \
    || fail "$label: the sandbox did not reach ratings: $out"
  echo "$label: 10 keyed -> sandbox, 10 unkeyed and 10 other-keyed -> baseline"
}

step "routing"
wait_steered
check_routing "routing"

step "rolling restart of the agent (pinned maps reused)"
kc -n shunt-system rollout restart daemonset/shunt
kc -n shunt-system rollout status daemonset/shunt --timeout=180s
wait_steered
check_routing "after restart"

step "agents never restarted"
restarts=$(kc -n shunt-system get pods -l app.kubernetes.io/name=shunt \
  -o jsonpath='{range .items[*]}{.status.containerStatuses[0].restartCount}{"\n"}{end}' | sort -u)
[[ "$restarts" == 0 ]] || fail "agent containers restarted: $restarts"

step "PASS"
