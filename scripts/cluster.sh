#!/usr/bin/env bash
# A real single-node Kubernetes cluster for the tests, entirely inside a
# network namespace of its own with no route out of the machine: etcd, the
# kube-apiserver, controller-manager, scheduler, kube-proxy, CoreDNS,
# containerd with the CNI bridge, and the kubelet, from cached binaries
# (scripts/envtest-assets.sh, scripts/k8s-assets.sh). Run as root.
#
#   bash scripts/cluster.sh up      # prints the env file to source (KUBECONFIG, NETNS, ...)
#   bash scripts/cluster.sh down    # stops everything and removes what it made
#   bash scripts/cluster.sh restart-kubelet
#
# State lives in $CLUSTER_DIR (default /tmp/memcuda-cluster). The node is
# "node-ci" at 10.200.0.1, an address on the namespace's loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${CLUSTER_DIR:-/tmp/memcuda-cluster}
NS=${CLUSTER_NETNS:-memcuda-ci}
IP=10.200.0.1
NODE=node-ci
P=$K/pki
# nsenter, not `ip netns exec`: that one also remounts /sys for the
# namespace, which hides the cgroup hierarchies the kubelet and runc need.
in_ns() { nsenter --net="/var/run/netns/$NS" "$@"; }
log() { printf '[cluster %5ss] %s\n' "$SECONDS" "$*" >&2; }

# bg NAME CMD...: a daemon inside the namespace, its pid in $K/NAME.pid.
bg() {
  local n=$1; shift
  nohup nsenter --net="/var/run/netns/$NS" "$@" >"$K/logs/$n.log" 2>&1 &
  echo $! >"$K/$n.pid"
}

wait_for() { # wait_for SECONDS WHAT CMD...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

pki() {
  mkdir -p "$P"
  (
    cd "$P"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -subj /CN=memcuda-ci-ca -days 7 -out ca.crt 2>/dev/null
    mk() { # name CN O SAN usage
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "/CN=$2${3:+/O=$3}" -out "$1.csr" 2>/dev/null
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s' "${5:-clientAuth}" "${4:+subjectAltName=$4}" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    mk apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$IP,IP:10.96.0.1" serverAuth
    mk kubelet-serving "$NODE" "" "DNS:$NODE,IP:$IP,IP:127.0.0.1" serverAuth
    mk admin admin system:masters
    mk apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
    mk kubelet "system:node:$NODE" system:nodes
    mk scheduler system:kube-scheduler
    mk kcm system:kube-controller-manager
    mk proxy system:kube-proxy
    mk coredns coredns system:masters
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  for n in admin kubelet scheduler kcm proxy coredns; do
    cat >"$K/$n.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ci
  cluster:
    server: https://$IP:6443
    certificate-authority-data: $(base64 -w0 "$P/ca.crt")
users:
- name: u
  user:
    client-certificate-data: $(base64 -w0 "$P/$n.crt")
    client-key-data: $(base64 -w0 "$P/$n.key")
contexts:
- name: c
  context: {cluster: ci, user: u}
current-context: c
EOF
  done
}

configs() {
  mkdir -p "$K/cni/net.d" "$K/containerd" "$K/manifests" "$K/pod-logs"
  cat >"$K/containerd/config.toml" <<EOF
version = 2
root = "$K/containerd/root"
state = "$K/containerd/state"
[grpc]
  address = "$K/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:ci"
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj cannot be set.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$K/cni/net.d"
EOF
  cat >"$K/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "ci-pod-net",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$K/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # Pods resolve names through CoreDNS on the node's address; nothing
  # outside the cluster resolves (no forwarder).
  printf 'nameserver %s\n' "$IP" >"$K/resolv.conf"
  cat >"$K/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$K/containerd/containerd.sock
address: $IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization: {mode: Webhook}
clusterDNS: ["$IP"]
clusterDomain: cluster.local
podLogsDir: $K/pod-logs
staticPodPath: $K/manifests
resolvConf: $K/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  cat >"$K/Corefile" <<EOF
.:53 {
    bind $IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $K/coredns.kubeconfig c
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
}

start_kubelet() {
  bg kubelet "$B/kubelet" --config="$K/kubelet-config.yaml" --kubeconfig="$K/kubelet.kubeconfig" --root-dir="$K/kubelet" \
    --node-ip="$IP" --hostname-override="$NODE" --v=1
}

up() {
  [ "$(id -u)" = 0 ] || { echo "scripts/cluster.sh needs root" >&2; exit 1; }
  down >/dev/null 2>&1 || true
  eval "$(bash scripts/envtest-assets.sh)"
  B=$(bash scripts/k8s-assets.sh)
  mkdir -p "$K/logs"
  ip netns add "$NS"
  in_ns ip link set lo up
  in_ns ip addr add "$IP/32" dev lo
  # No default route: nothing here can reach outside the machine.
  if in_ns ip route show default | grep -q .; then echo "the namespace has a default route" >&2; exit 1; fi
  pki
  configs
  log "namespace $NS, node $NODE at $IP (no default route)"
  bg containerd containerd --config "$K/containerd/config.toml"
  bg etcd "$TEST_ASSET_ETCD" --name ci --data-dir "$K/etcd" --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster ci=http://127.0.0.1:23800
  bg apiserver "$TEST_ASSET_KUBE_APISERVER" --etcd-servers=http://127.0.0.1:23790 --bind-address="$IP" --advertise-address="$IP" --secure-port=6443 \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=Node,RBAC --allow-privileged=true \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP --enable-admission-plugins=NodeRestriction
  export KUBECONFIG=$K/admin.kubeconfig
  wait_for 90 "the apiserver" in_ns kubectl get --raw /readyz
  log "apiserver ready"
  bg kcm "$B/kube-controller-manager" --kubeconfig="$K/kcm.kubeconfig" --authentication-kubeconfig="$K/kcm.kubeconfig" \
    --authorization-kubeconfig="$K/kcm.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key"
  bg scheduler "$B/kube-scheduler" --kubeconfig="$K/scheduler.kubeconfig" --authentication-kubeconfig="$K/scheduler.kubeconfig" \
    --authorization-kubeconfig="$K/scheduler.kubeconfig" --bind-address=127.0.0.1 --leader-elect=false
  bg kube-proxy "$B/kube-proxy" --kubeconfig="$K/proxy.kubeconfig" --hostname-override="$NODE" --proxy-mode=iptables --cluster-cidr=10.88.0.0/16 \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --nodeport-addresses=primary
  bg coredns "$B/coredns" -conf "$K/Corefile"
  start_kubelet
  wait_for 120 "node Ready" in_ns kubectl wait --for=condition=Ready "node/$NODE" --timeout=5s
  wait_for 60 "the node untainted" sh -c "[ -z \"\$(nsenter --net=/var/run/netns/$NS kubectl get node $NODE -o jsonpath='{.spec.taints}')\" ]"
  wait_for 60 "the default service account" in_ns kubectl -n default get sa default
  log "node Ready"
  cat >"$K/env" <<EOF
export KUBECONFIG=$K/admin.kubeconfig
export CLUSTER_DIR=$K
export CLUSTER_NETNS=$NS
export CLUSTER_NODE=$NODE
export CLUSTER_IP=$IP
export CONTAINERD_ADDRESS=$K/containerd/containerd.sock
EOF
  echo "$K/env"
}

# import IMAGE-ARCHIVE...: loads docker-archive tarballs into the node's containerd.
import_images() {
  for f in "$@"; do
    ctr -a "$K/containerd/containerd.sock" -n k8s.io images import "$f" >/dev/null
  done
}

restart_kubelet() {
  B=$(bash scripts/k8s-assets.sh)
  stop kubelet
  start_kubelet
}

stop() { # stop NAME: the daemon and what it started in the namespace
  local f=$K/$1.pid
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  pkill -TERM -P "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  pkill -KILL -P "$pid" 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

down() {
  # Pods first (their containers are children of containerd's shims), then
  # the daemons, then what they left: mounts, pod network namespaces,
  # cgroups, the namespace itself.
  stop kubelet
  if [ -S "$K/containerd/containerd.sock" ]; then
    for t in $(ctr -a "$K/containerd/containerd.sock" -n k8s.io tasks list -q 2>/dev/null); do
      ctr -a "$K/containerd/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
  fi
  pkill -KILL -f "containerd-shim.*$K/containerd" 2>/dev/null || true
  for n in coredns kube-proxy scheduler kcm apiserver etcd containerd; do stop "$n"; done
  sleep 0.5
  grep -o " $K[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for m in $(grep -o ' /run/netns/cni-[^ ]*\| /var/run/netns/cni-[^ ]*' /proc/mounts 2>/dev/null | sort -u); do
    # the pod namespaces CNI made for this cluster's sandboxes
    umount -l "$m" 2>/dev/null || true
    rm -f "$m"
  done
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  ip netns del "$NS" 2>/dev/null || true
  rm -f /var/lib/kubelet/device-plugins/memcuda*.sock /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  rm -rf "$K"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  import) shift; import_images "$@" ;;
  restart-kubelet) restart_kubelet ;;
  *) echo "usage: $0 up|down|import ARCHIVE...|restart-kubelet" >&2; exit 2 ;;
esac
