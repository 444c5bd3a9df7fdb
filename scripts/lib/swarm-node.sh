# shellcheck shell=bash
# The lab's node image: the offline Debian base image plus Debian's docker.io, as text.
# scripts/swarm-lab hashes this text into the image's label, so editing it rebuilds the image.
#
#   swarm_node_dockerfile BASE   print the Dockerfile
#   swarm_node_entrypoint        print the node's entrypoint (runs dockerd as PID 1's child)

swarm_node_dockerfile() {
    cat <<DOCKERFILE
FROM $1
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      docker.io iproute2 iptables ca-certificates git curl procps netcat-openbsd tini \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY entrypoint.sh /usr/local/bin/swarm-node-entrypoint
VOLUME /var/lib/docker
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/swarm-node-entrypoint"]
DOCKERFILE
}

# The node shares the host's cgroup tree (cgroup v1, host cgroup namespace): without a parent
# of its own, the inner dockerd would put its containers under the host engine's /docker
# cgroup, beside the host's containers. Nesting them under the node's own cgroup keeps them
# apart, and makes `docker stats` of the node count the functions it runs.
swarm_node_entrypoint() {
    cat <<'ENTRYPOINT'
#!/bin/sh
set -eu
cg="$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' /proc/self/cgroup)"
if [ -z "$cg" ]; then
    # cgroup v2: one unified line "0::/path"
    cg="$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)"
fi
set --
if [ -n "$cg" ] && [ "$cg" != "/" ]; then
    set -- --cgroup-parent="${cg%/}/lab"
fi
exec dockerd --host=unix:///var/run/docker.sock "$@" >>/var/log/dockerd.log 2>&1
ENTRYPOINT
}
