#!/usr/bin/env bash
# The topology `svclab bench topology` builds, made the classic way: one
# `ip` command per object, one object after another. A fabric namespace
# with a bridge; per node a namespace with an uplink, a cni0 bridge, a
# default route and routes to the other nodes' pod CIDRs; per pod a
# namespace on a veth (hairpin on), with an address and a default route;
# an external client on the fabric; the same sysctls the lab writes.
#
#   ci/ip-baseline.sh NODES PODS_PER_NODE
#
# Prints `namespaces=N`, `create_seconds=S` and `teardown_seconds=S`.
# Every namespace is named svclab-ipb<pid>-...; all of them are removed on
# exit, on error and on SIGINT/SIGTERM. The host's own network namespace is
# never changed: links, addresses and routes are made with `ip -n NS`, and
# veth peers are created directly inside their namespace.
set -euo pipefail

usage="usage: ip-baseline.sh NODES PODS_PER_NODE (1-250 nodes, 1-250 pods per node)"
nodes=${1:?$usage}
ppn=${2:?$usage}
case "$nodes$ppn" in *[!0-9]*) echo "$usage" >&2; exit 2 ;; esac
if [ "$nodes" -lt 1 ] || [ "$nodes" -gt 250 ] || [ "$ppn" -lt 1 ] || [ "$ppn" -gt 250 ]; then
  echo "$usage" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "ip-baseline.sh: needs root to create network namespaces" >&2
  exit 2
fi

prefix="svclab-ipb$$-"

cleanup() {
  local ns
  for ns in $(ls /run/netns 2>/dev/null | grep "^$prefix" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

fabric="${prefix}fabric"
external="${prefix}external"

start=$(now)
ip netns add "$fabric"
ip netns exec "$fabric" sysctl -qew net.bridge.bridge-nf-call-iptables=0 net.ipv4.icmp_ratelimit=0
ip -n "$fabric" link add br0 type bridge
ip -n "$fabric" addr add 172.18.0.1/24 dev br0
ip -n "$fabric" link set br0 up

ip netns add "$external"
ip netns exec "$external" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
ip -n "$fabric" link add x0 type veth peer name eth0 netns "$external"
ip -n "$fabric" link set x0 master br0 up
ip -n "$external" link set lo up
ip -n "$external" addr add 172.18.0.254/24 dev eth0
ip -n "$external" link set eth0 up

for ((i = 0; i < nodes; i++)); do
  node="${prefix}node-$i"
  ip netns add "$node"
  ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.icmp_ratelimit=0 \
    net.bridge.bridge-nf-call-iptables=1
  ip -n "$fabric" link add "n$i" type veth peer name eth0 netns "$node"
  ip -n "$fabric" link set "n$i" master br0 up
  ip -n "$node" link set lo up
  ip -n "$node" addr add "172.18.0.$((i + 2))/24" dev eth0
  ip -n "$node" link set eth0 up
  ip -n "$node" link add cni0 type bridge
  ip -n "$node" addr add "10.244.$i.1/24" dev cni0
  ip -n "$node" link set cni0 up
  ip -n "$node" route add default via 172.18.0.1
  for ((j = 0; j < nodes; j++)); do
    if [ "$j" != "$i" ]; then
      ip -n "$node" route add "10.244.$j.0/24" via "172.18.0.$((j + 2))"
    fi
  done
  for ((k = 0; k < ppn; k++)); do
    pod="${prefix}pod-$i-$k"
    ip netns add "$pod"
    ip netns exec "$pod" sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
    ip -n "$node" link add "p$k" type veth peer name eth0 netns "$pod"
    ip -n "$node" link set "p$k" master cni0 up
    ip -n "$node" link set "p$k" type bridge_slave hairpin on
    ip -n "$pod" link set lo up
    ip -n "$pod" addr add "10.244.$i.$((k + 2))/24" dev eth0
    ip -n "$pod" link set eth0 up
    ip -n "$pod" route add default via "10.244.$i.1"
  done
done
created=$(now)
made=$(ls /run/netns | grep -c "^$prefix")

cleanup
gone=$(now)
left=$(ls /run/netns 2>/dev/null | grep -c "^$prefix" || true)
if [ "$left" != 0 ]; then
  echo "ip-baseline.sh: $left namespace(s) could not be deleted" >&2
  exit 1
fi

echo "namespaces=$made"
echo "create_seconds=$(seconds "$start" "$created")"
echo "teardown_seconds=$(seconds "$created" "$gone")"
