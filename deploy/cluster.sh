#!/usr/bin/env bash
# The docker-compose test cluster (deploy/docker-compose.yml):
#   deploy/cluster.sh up [--build [BINARY]]  start (builds tessera:dev first if absent or
#                                            asked), wait until healthy, create the first
#                                            access key once: deploy/.cluster/credentials.json
#   deploy/cluster.sh status                 containers, `tessera admin status`, name-server members;
#                                            exit 1 unless all healthy
#   deploy/cluster.sh creds                  print deploy/.cluster/credentials.json
#   deploy/cluster.sh down                   remove containers, volumes and deploy/.cluster
set -euo pipefail

deploy=$(cd "$(dirname "$0")" && pwd)
state=$deploy/.cluster
servers=172.28.0.11:7001,172.28.0.12:7001,172.28.0.13:7001
nodes=(ns1 ns2 ns3 os1 os2 os3 cs1 cs2 cs3 cs4 cs5 cs6 gw1 gw2)
timeout_s=${TESSERA_UP_TIMEOUT:-180}

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p tessera -f "$deploy/docker-compose.yml" "$@"
    else
        docker-compose -p tessera -f "$deploy/docker-compose.yml" "$@"
    fi
}

# `tessera admin ARGS` inside the first running gateway or name server.
admin() {
    local node
    for node in gw1 gw2 ns1 ns2 ns3; do
        if [[ $(docker inspect -f '{{.State.Running}}' "tessera-$node" 2>/dev/null) == true ]]; then
            docker exec "tessera-$node" /tessera admin "$@"
            return
        fi
    done
    echo "cluster.sh: no gateway or name server container is running" >&2
    return 1
}

# Until every container's health check passes; fails at once if one exited.
wait_healthy() {
    local deadline=$((SECONDS + timeout_s)) node health pending
    while true; do
        pending=()
        for node in "${nodes[@]}"; do
            health=$(docker inspect -f '{{.State.Status}}/{{.State.Health.Status}}' "tessera-$node" 2>/dev/null ||
                echo missing)
            case $health in
                running/healthy) ;;
                exited/* | dead/* | missing)
                    echo "cluster.sh: tessera-$node is $health; its last log lines:" >&2
                    docker logs --tail 20 "tessera-$node" >&2 || true
                    return 1
                    ;;
                *) pending+=("$node:$health") ;;
            esac
        done
        ((${#pending[@]} == 0)) && return 0
        if ((SECONDS > deadline)); then
            echo "cluster.sh: not healthy after ${timeout_s}s: ${pending[*]}" >&2
            return 1
        fi
        sleep 2
    done
}

# Until `admin status` is healthy and lists the 9 object and chunk servers.
wait_cluster() {
    local deadline=$((SECONDS + timeout_s))
    until admin status --servers "$servers" --certs /certs 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["healthy"] and sum(n["alive"] for n in s["nodes"]) >= 9 else 1)'; do
        if ((SECONDS > deadline)); then
            echo "cluster.sh: admin status not healthy after ${timeout_s}s:" >&2
            admin status --servers "$servers" --certs /certs >&2 || true
            return 1
        fi
        sleep 2
    done
}

up() {
    if [[ ${1:-} == --build ]] || ! docker image inspect tessera:dev >/dev/null 2>&1; then
        "$deploy/build-image.sh" ${2:+"$2"}
    fi
    compose up -d
    wait_healthy
    wait_cluster
    mkdir -p "$state"
    if [[ ! -f $state/credentials.json ]]; then
        # Any key may create buckets (it owns what it creates): no grant needed.
        admin key --servers "$servers" --certs /certs create admin | python3 -c '
import json, os, sys
key = json.loads(sys.stdin.readline())
out = {"s3_endpoint": "http://127.0.0.1:9000",
       "s3_endpoints": ["http://127.0.0.1:9000", "http://127.0.0.1:9001"],
       "access_key": key["key_id"], "secret_key": key["secret"], "region": "us-east-1"}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(out, f, indent=2)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])' "$state/credentials.json"
    fi
    echo "cluster.sh: up; S3 on http://127.0.0.1:9000 and :9001, credentials in $state/credentials.json" >&2
}

status() {
    local report containers node
    report=$(admin status --servers "$servers" --certs /certs)
    containers=$(for node in "${nodes[@]}"; do
        echo "$node $(docker inspect -f '{{.State.Status}}/{{.State.Health.Status}}' "tessera-$node" 2>/dev/null ||
            echo missing)"
    done)
    admin ns --servers "$servers" --certs /certs list | python3 -c '
import json, sys
status, members = json.loads(sys.argv[1]), json.load(sys.stdin)
containers = dict(line.split() for line in sys.argv[2].splitlines())
print(json.dumps({"containers": containers, "status": status, "nameservers": members}, indent=2))
healthy = all(c == "running/healthy" for c in containers.values()) and status["healthy"]
sys.exit(0 if healthy and members["leader"] is not None else 1)' "$report" "$containers"
}

case ${1:-} in
    up) shift && up "$@" ;;
    down)
        compose down --volumes --remove-orphans
        rm -rf "$state"
        ;;
    status) status ;;
    creds) cat "$state/credentials.json" ;;
    *)
        echo "usage: $0 up [--build [BINARY]] | down | status | creds" >&2
        exit 2
        ;;
esac
