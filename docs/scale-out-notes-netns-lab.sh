#!/usr/bin/env bash
# The netns lab run of docs/scale-out-notes-netns.md (issue 12), from the checkout. Usage: lab.sh setup|prove|isolate|bench|overlayns|clean  (state in /tmp/netns-lab/state)
set -euo pipefail
M=esl-lab-1
IMG=eserveless/base:bookworm
PROBE=${NETNS_PROBE:-target/debug/examples/netns_probe}
ST=${NETNS_LAB_STATE:-/tmp/netns-lab/state}
mkdir -p "$(dirname "$ST")"
m() { docker exec "$M" "$@"; }
say() { printf '\n$ %s\n' "$*"; }
run() { say "$@"; "$@"; }
# shellcheck disable=SC2016
ECHO='my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 16, ReuseAddr => 1) or die "$!"; while (my $c = $s->accept) { while (my $l = <$c>) { print $c $l } close $c }'
[[ -f $ST ]] && source "$ST"

svc() { # name net node
    m docker service create --detach --quiet --no-resolve-image --name "$1" --network "$2" --endpoint-mode dnsrr \
        --restart-condition none --constraint "node.hostname==$3" "$IMG" perl -MIO::Socket::INET -e "$ECHO" >/dev/null
}
task_ip() { m sh -c "docker inspect --format '{{range .NetworksAttachments}}{{range .Addresses}}{{.}}{{end}}{{end}}' \$(docker service ps -q --filter desired-state=running $1 | head -n1)" | cut -d/ -f1; }
wait_running() {
    for _ in $(seq 300); do
        [[ "$(m docker service ps --format '{{.CurrentState}}' "$1" | head -n1)" == Running* ]] && return 0
        sleep 0.2
    done
    echo "$1 not running" >&2; m docker service ps --no-trunc "$1" >&2; return 1
}

case "$1" in
setup)
    T=$(date +%s)
    NA=nn-a-$T NB=nn-b-$T
    run docker cp "$PROBE" "$M":/usr/local/bin/netns_probe
    run m docker network create --driver overlay --attachable --subnet 10.231.1.0/24 "$NA"
    run m docker network create --driver overlay --attachable --subnet 10.231.2.0/24 "$NB"
    for s in "a-local $NA esl-lab-1" "a-remote $NA esl-lab-2" "b-local $NB esl-lab-1" "b-remote $NB esl-lab-2"; do
        set -- $s
        say svc nn-$1-$T "$2" "$3"; svc "nn-$1-$T" "$2" "$3"
    done
    run m docker run -d --name "nn-attach-a-$T" --network "$NA" "$IMG" sleep infinity
    run m docker run -d --name "nn-attach-b-$T" --network "$NB" "$IMG" sleep infinity
    for s in a-local a-remote b-local b-remote; do wait_running "nn-$s-$T"; done
    {
        echo "T=$T NA=$NA NB=$NB"
        echo "A_LOCAL=$(task_ip nn-a-local-$T) A_REMOTE=$(task_ip nn-a-remote-$T)"
        echo "B_LOCAL=$(task_ip nn-b-local-$T) B_REMOTE=$(task_ip nn-b-remote-$T)"
        echo "SKA=$(m docker inspect -f '{{.NetworkSettings.SandboxKey}}' nn-attach-a-$T)"
        echo "SKB=$(m docker inspect -f '{{.NetworkSettings.SandboxKey}}' nn-attach-b-$T)"
        echo "SKAL=$(m sh -c "docker inspect -f '{{.NetworkSettings.SandboxKey}}' \$(docker ps -q --filter label=com.docker.swarm.service.name=nn-a-local-$T)")"
    } >"$ST"
    cat "$ST"
    ;;
prove)
    run m docker service ps --format '{{.Name}} {{.Node}} {{.CurrentState}}' "nn-a-local-$T" "nn-a-remote-$T" "nn-b-local-$T" "nn-b-remote-$T"
    run m netns_probe once "$SKA" "$A_LOCAL:8080"
    run m netns_probe once "$SKA" "$A_REMOTE:8080"
    run m netns_probe once "$SKB" "$B_REMOTE:8080"
    say "the node's own namespace has no route to the overlay:"; m ip route get "$A_REMOTE" || true
    ;;
isolate)
    # Guard: anything for 10.231.0.0/16 that would leave the manager through docker_gwbridge is
    # dropped (and counted) here, so no probe reaches past the lab.
    run m iptables -I FORWARD 1 -d 10.231.0.0/16 -j DROP
    run m nsenter --net="$SKA" ip route
    run m nsenter --net="$SKA" ip route get "$B_REMOTE"
    B_LOCAL_GW=$(m nsenter --net="$(m sh -c "docker inspect -f '{{.NetworkSettings.SandboxKey}}' \$(docker ps -q --filter label=com.docker.swarm.service.name=nn-b-local-$T)")" ip -4 -o addr show eth1 | awk '{print $4}' | cut -d/ -f1)
    echo "B_LOCAL_GW=$B_LOCAL_GW" >>"$ST"
    for dst in "$A_LOCAL" "$A_REMOTE" "$B_LOCAL" "$B_REMOTE" "$B_LOCAL_GW"; do
        say "container on A (manager) -> $dst:8080"
        m docker run --rm --network "$NA" "$IMG" bash -c "timeout 3 bash -c 'exec 3<>/dev/tcp/$dst/8080 && echo ping >&3 && head -n1 <&3' && echo REACHED || echo 'not reached'"
    done
    for dst in "$B_LOCAL" "$B_REMOTE" "$B_LOCAL_GW"; do
        say "probe via A's attach namespace -> $dst:8080"; m netns_probe once "$SKA" "$dst:8080" 2>&1 || true
    done
    run m iptables -L FORWARD 1 -v -n
    say "without the attach namespace's default route:"
    run m nsenter --net="$SKA" ip route del default
    run m nsenter --net="$SKA" ip route del 172.18.0.0/16
    for dst in "$B_LOCAL" "$B_REMOTE" "$B_LOCAL_GW" "$A_LOCAL" "$A_REMOTE"; do
        say "probe via A's attach namespace -> $dst:8080"; m netns_probe once "$SKA" "$dst:8080" 2>&1 || true
    done
    run m iptables -D FORWARD -d 10.231.0.0/16 -j DROP
    ;;
bench)
    N=${2:-300}
    AL_GW=$(m nsenter --net="$SKAL" ip -4 -o addr show eth1 | awk '{print $4}' | cut -d/ -f1)
    run m netns_probe bench "$SKA" "$A_LOCAL:8080" "$AL_GW:8080" "$N"
    run m nsenter --net="$SKA" netns_probe bench "$SKA" "$A_LOCAL:8080" "$A_LOCAL:8080" "$N"
    run m netns_probe bench "$SKA" "$A_REMOTE:8080" - "$N"
    ;;
overlayns)
    NID=$(m docker network inspect -f '{{.Id}}' "$NA")
    run m ls /var/run/docker/netns/
    ONS=/var/run/docker/netns/1-${NID:0:10}
    run m nsenter --net="$ONS" ip -4 -o addr
    say "probe via the overlay's own namespace $ONS"
    m netns_probe once "$ONS" "$A_LOCAL:8080" 2>&1 || true
    m netns_probe once "$ONS" "$A_REMOTE:8080" 2>&1 || true
    ;;
clean)
    m docker service rm "nn-a-local-$T" "nn-a-remote-$T" "nn-b-local-$T" "nn-b-remote-$T" || true
    m docker rm -f "nn-attach-a-$T" "nn-attach-b-$T" || true
    sleep 3
    m docker network rm "$NA" "$NB" || true
    m iptables -D FORWARD -d 10.231.0.0/16 -j DROP 2>/dev/null || true
    rm -f "$ST"
    ;;
esac
