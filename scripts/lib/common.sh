# shellcheck shell=bash
# Shared helpers for eserveless shell scripts. Source this file; do not run it.
#
#   log MSG...        print a timestamped message on STDERR (never stdout)
#   die MSG...        log MSG and exit 1
#   ensure_docker     make sure a Docker daemon answers on the local socket,
#                     installing docker.io (Debian) and starting dockerd
#                     in the background if needed
#   docker_ok         succeed if the daemon answers right now
#   image_exists REF  succeed if the image REF is present locally
#
# Environment knobs:
#   ESERVELESS_DOCKERD_LOG   dockerd log file (default /var/log/eserveless-dockerd.log)
#   ESERVELESS_DOCKER_WAIT   seconds to wait for dockerd to answer (default 60)
#   ESERVELESS_DOCKER_CLI    docker CLI to use (default /usr/bin/docker if
#                            present, else `docker` from PATH)

# Guard against double sourcing.
if [[ -n "${_ESERVELESS_COMMON_SH:-}" ]]; then
    return 0
fi
_ESERVELESS_COMMON_SH=1

ESERVELESS_DOCKER_SOCK="${ESERVELESS_DOCKER_SOCK:-/var/run/docker.sock}"

log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    log "ERROR: $*"
    exit 1
}

# Choose which docker CLI to use. Debian's docker.io ships /usr/bin/docker,
# which matches the Debian daemon (API 1.41). A newer client elsewhere on PATH
# (e.g. /usr/local/bin/docker v28) normally negotiates the API version down,
# but if it is ever pinned too high we export DOCKER_API_VERSION so that it
# still talks to an old daemon. Callers use the `docker` function below.
_ESERVELESS_DOCKER_BIN=""
_pick_docker_cli() {
    if [[ -n "${ESERVELESS_DOCKER_CLI:-}" ]]; then
        _ESERVELESS_DOCKER_BIN="$ESERVELESS_DOCKER_CLI"
    elif [[ -x /usr/bin/docker ]]; then
        _ESERVELESS_DOCKER_BIN=/usr/bin/docker
    elif command -v docker >/dev/null 2>&1; then
        _ESERVELESS_DOCKER_BIN="$(command -v docker)"
    else
        _ESERVELESS_DOCKER_BIN=""
    fi
}

# Wrapper so that every script uses the chosen CLI.
docker() {
    if [[ -z "$_ESERVELESS_DOCKER_BIN" ]]; then
        _pick_docker_cli
    fi
    [[ -n "$_ESERVELESS_DOCKER_BIN" ]] || die "no docker CLI found (install the docker.io package)"
    command "$_ESERVELESS_DOCKER_BIN" "$@"
}

# Ask the daemon for /_ping directly over the unix socket (needs curl).
_docker_ping_socket() {
    [[ -S "$ESERVELESS_DOCKER_SOCK" ]] || return 1
    command -v curl >/dev/null 2>&1 || return 1
    [[ "$(curl -fsS --max-time 5 --unix-socket "$ESERVELESS_DOCKER_SOCK" http://localhost/_ping 2>/dev/null)" == "OK" ]]
}

# Succeed if the daemon answers now (socket ping, or `docker info` as fallback).
docker_ok() {
    if _docker_ping_socket; then
        return 0
    fi
    _pick_docker_cli
    [[ -n "$_ESERVELESS_DOCKER_BIN" ]] || return 1
    timeout 20 "$_ESERVELESS_DOCKER_BIN" info >/dev/null 2>&1
}

# If the CLI and daemon disagree on the API version (a too-new client that
# does not negotiate), pin the client to the daemon's API version.
_fix_docker_api_version() {
    _pick_docker_cli
    [[ -n "$_ESERVELESS_DOCKER_BIN" ]] || return 0
    if timeout 20 "$_ESERVELESS_DOCKER_BIN" version >/dev/null 2>&1; then
        return 0
    fi
    local api=""
    if _docker_ping_socket; then
        api="$(curl -fsS --max-time 5 --unix-socket "$ESERVELESS_DOCKER_SOCK" http://localhost/version 2>/dev/null |
            sed -n 's/.*"ApiVersion":"\([0-9.]*\)".*/\1/p')"
    fi
    api="${api:-1.41}"
    log "docker CLI $_ESERVELESS_DOCKER_BIN cannot talk to the daemon as is; exporting DOCKER_API_VERSION=$api"
    export DOCKER_API_VERSION="$api"
}

# Run apt-get update at most once per script run.
_ESERVELESS_APT_UPDATED=""
apt_update_once() {
    if [[ -z "$_ESERVELESS_APT_UPDATED" ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        _ESERVELESS_APT_UPDATED=1
    fi
}

# apt_install PKG...: install Debian packages (root + apt-get required).
# `apt-get update` runs only if needed: when there are no package lists yet,
# or when installing from the existing (possibly stale) lists fails.
apt_install() {
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing packages: $* -- install them as root (apt-get install $*) and retry"
    fi
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt_update_once
    fi
    log "apt-get install $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; then
        [[ -z "$_ESERVELESS_APT_UPDATED" ]] || die "apt-get install $* failed"
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
            die "apt-get install $* failed"
    fi
}

# ensure_cmd CMD PKG: install PKG when CMD is not found.
ensure_cmd() {
    local cmd="$1" pkg="$2"
    if ! command -v "$cmd" >/dev/null 2>&1; then
        apt_install "$pkg"
    fi
}

# True if process $1 exists and is not a zombie: a daemon that exited stays a zombie until
# its parent reaps it, and `kill -0` and `pgrep` still see it.
_pid_alive() {
    local state
    [[ "${1:-}" =~ ^[0-9]+$ ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# True if a live dockerd process exists (pgrep may be absent on minimal systems).
_dockerd_running() {
    if [[ -f /var/run/docker.pid ]] && _pid_alive "$(cat /var/run/docker.pid 2>/dev/null)"; then
        return 0
    fi
    if command -v pgrep >/dev/null 2>&1; then
        local pid
        for pid in $(pgrep -x dockerd 2>/dev/null); do
            _pid_alive "$pid" && return 0
        done
    fi
    return 1
}

ensure_docker() {
    if docker_ok; then
        _fix_docker_api_version
        return 0
    fi

    # Install Docker if the daemon binary is missing. docker.io also pulls in
    # containerd, runc and iptables; curl is used for the readiness ping.
    if ! command -v dockerd >/dev/null 2>&1; then
        if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
            die "dockerd not found. Install Docker first, e.g. as root on Debian/Ubuntu:
    apt-get update && apt-get install -y docker.io
or see https://docs.docker.com/engine/install/"
        fi
        # (On a host without systemd the package's init script may already
        # start dockerd; the wait loop below copes with that.)
        apt_install docker.io curl ca-certificates
    fi
    command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates

    if [[ "$(id -u)" -ne 0 ]]; then
        die "the Docker daemon is not running and only root can start it here.
Start it (e.g. 'sudo dockerd &') or add your user to the docker group."
    fi

    local logf="${ESERVELESS_DOCKERD_LOG:-/var/log/eserveless-dockerd.log}"
    local wait_s="${ESERVELESS_DOCKER_WAIT:-60}"
    mkdir -p "$(dirname "$logf")"

    # A stale pid file from a dead daemon makes dockerd refuse to start.
    if [[ -f /var/run/docker.pid ]] && ! _pid_alive "$(cat /var/run/docker.pid 2>/dev/null)"; then
        rm -f /var/run/docker.pid
    fi

    if _dockerd_running; then
        log "dockerd is already running but not answering yet; waiting"
    else
        log "starting dockerd in the background (log: $logf)"
        # setsid + nohup: detach from this shell's session and terminal so the
        # daemon survives the script; no systemd is assumed. Started from a subshell
        # that exits at once, so the daemon's parent is init, which reaps it when it
        # stops: a child of this shell would stay a zombie under whatever the shell
        # execs next (scripts/test execs cargo), and block the next start.
        (setsid nohup dockerd </dev/null >>"$logf" 2>&1 &)
    fi

    local i
    for ((i = 0; i < wait_s; i++)); do
        if docker_ok; then
            log "dockerd is up"
            _fix_docker_api_version
            return 0
        fi
        sleep 1
    done
    log "dockerd did not answer within ${wait_s}s; last lines of $logf:"
    tail -n 30 "$logf" >&2 || true
    die "could not start dockerd"
}

# image_exists REF: true if the image is present in the local daemon.
image_exists() {
    [[ -n "${1:-}" ]] && docker image inspect "$1" >/dev/null 2>&1
}
