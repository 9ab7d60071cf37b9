# Shared helpers for the scripts in this folder (sourced, not run).
# Each script sets ME to its own name before sourcing this file.

say() { echo "${ME}: $*" >&2; }
die() { echo "${ME}: error: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }
is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null; }

# apt_install PKG... — install Debian packages. A fresh CI machine may have no
# package lists at all: then 'apt-get update' runs first; with lists present the
# install is tried as is, and only if that fails (stale lists) updated and retried.
# apt's chatter is shown only when it fails.
apt_install() {
    if ! is_root || ! is_debian; then
        die "need root on Debian to install: $* (install them by hand)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -q -y -o DPkg::Lock::Timeout=300) out
    say "installing $*"
    if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null &&
        out=$("${apt[@]}" install --no-install-recommends "$@" 2>&1); then
        return 0
    fi
    say "apt-get update"
    out=$("${apt[@]}" update 2>&1) || { echo "$out" >&2; die "apt-get update failed"; }
    out=$("${apt[@]}" install --no-install-recommends "$@" 2>&1) ||
        { echo "$out" >&2; die "apt-get install $* failed"; }
}

# ping_unix_socket PATH — does a Docker engine answer on this unix socket?
ping_unix_socket() {
    [ -S "$1" ] && curl -sf --max-time 5 --unix-socket "$1" http://localhost/_ping >/dev/null 2>&1
}

# wait_for SECONDS CMD... — poll CMD every 0.1 s until it succeeds; 1 on timeout.
wait_for() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# Milliseconds since the epoch, and seconds since such a stamp with one decimal:
# start times are a few seconds, so whole seconds would say too little.
now_ms() { date +%s%3N; }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

# kill_pidfile PIDFILE NAME [SECS] — stop the process named in PIDFILE (never by
# process name: other copies may belong to someone else). Checks the pid still
# runs NAME, so a stale pidfile whose pid was reused is left alone.
kill_pidfile() {
    local file=$1 name=$2 secs=${3:-20} pid
    pid=$(pidfile_pid "$file" "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for "$secs" pid_gone "$pid"; then
        say "$name ($pid) ignored SIGTERM for ${secs}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 10 pid_gone "$pid" || die "$name ($pid) does not die"
    fi
}

# pidfile_pid PIDFILE NAME — print the pid in PIDFILE if that process is a live NAME.
pidfile_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$2" ] || return 1
    pid_gone "$pid" && return 1
    echo "$pid"
}

# pid_gone PID — the process has exited (a zombie waiting to be reaped counts).
pid_gone() {
    [ ! -e "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

ensure_curl() { command -v curl >/dev/null || apt_install curl ca-certificates; }
