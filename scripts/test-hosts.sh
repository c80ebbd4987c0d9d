#!/usr/bin/env bash
# Test hosts on one machine: network namespaces saas-host1..N, each joined to this machine by a
# veth pair on a /30 of its own, for running workers "on other hosts" against a broker and a
# database that stay here (tests/chaos/test_hosts.py, bench/hosts.py). Needs root
# (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.
#
#   scripts/test-hosts.sh up N       make hosts 1..N (those that exist are made again)
#   scripts/test-hosts.sh down N     remove hosts 1..N, killing what still runs on them
#   scripts/test-hosts.sh cut I      take host I's link down: its connections hang, as when a
#                                    host drops off the network, rather than being reset
#   scripts/test-hosts.sh heal I     bring host I's link back
#   scripts/test-hosts.sh address I  this machine's address as host I sees it
#
# Host I is 10.231.I.2 inside its namespace; this machine is 10.231.I.1 on the other end.
# Nothing listens on those addresses by itself: whoever runs the hosts forwards the ports it
# needs (the tests start socat on both ends, so every service keeps its 127.0.0.1 address).
# The names and addresses are the same in every run: two runs at once on one machine would
# remake and remove each other's hosts.
set -euo pipefail

namespace() { echo "saas-host$1"; }
link() { echo "saas-h$1"; }          # this machine's end (interface names: 15 bytes at most)
peer() { echo "saas-h$1p"; }         # the host's end, inside its namespace
machine_address() { echo "10.231.$1.1"; }
host_address() { echo "10.231.$1.2"; }

check_index() {
    if ! [[ $1 =~ ^[0-9]+$ ]] || ((10#$1 < 1 || 10#$1 > 250)); then
        echo "a host number is 1 to 250, not '$1'" >&2
        exit 2
    fi
}

host_remove() {
    local pids
    # A process left inside would keep the namespace, and its network, alive once unnamed.
    pids=$(ip netns pids "$(namespace "$1")" 2>/dev/null || true)
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$(namespace "$1")" 2>/dev/null || true
    ip link del "$(link "$1")" 2>/dev/null || true
}

host_make() {
    local ns
    ns=$(namespace "$1")
    host_remove "$1"
    ip netns add "$ns"
    ip link add "$(link "$1")" type veth peer name "$(peer "$1")"
    ip link set "$(peer "$1")" netns "$ns"
    ip addr add "$(machine_address "$1")/30" dev "$(link "$1")"
    ip link set "$(link "$1")" up
    ip -n "$ns" addr add "$(host_address "$1")/30" dev "$(peer "$1")"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$(peer "$1")" up
    ip -n "$ns" route add default via "$(machine_address "$1")"
}

usage() {
    # The comment at the top of this file, without its "# ".
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

(($# == 2)) || usage
command=$1
check_index "$2"
argument=$((10#$2))
case $command in
    up) for i in $(seq "$argument"); do host_make "$i"; done ;;
    down) for i in $(seq "$argument"); do host_remove "$i"; done ;;
    cut) ip link set "$(link "$argument")" down ;;
    heal) ip link set "$(link "$argument")" up ;;
    address) machine_address "$argument" ;;
    *) usage ;;
esac
