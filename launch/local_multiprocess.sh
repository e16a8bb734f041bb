#!/usr/bin/env bash
# Run crate_jax.main as N cooperating JAX processes on this machine (jax.distributed over
# 127.0.0.1): the multi-host code path (one coordinator, per-process data slices, only process 0
# writing metrics and reports) without a cluster.
#
# Usage:
#   launch/local_multiprocess.sh N [options] -- <crate_jax.main arguments...>
#
# Arguments:
#   N                         number of processes (a positive integer)
#   --port P                  coordinator port on 127.0.0.1 (default: a free port)
#   --log-dir DIR             where processes 1..N-1 write process_<i>.log (default:
#                             $TMPDIR/crate_jax_<port>/; never the workdir, which belongs to
#                             process 0)
#   --devices-per-process K   K CPU devices in each process (appends
#                             --xla_force_host_platform_device_count=K to XLA_FLAGS)
#   --dry-run                 print the N commands and exit
#   --help                    print this text
# Everything after `--` goes to every process unchanged; the launcher adds
# --coordinator_address=127.0.0.1:<port> --num_processes=N --process_id=<i>.
#
# Process 0 streams its output here; the others write to the log folder. The launcher waits for
# all of them and exits with the first non-zero exit code. When one fails, the others are sent
# SIGTERM, then SIGKILL after CRATE_JAX_KILL_AFTER_S seconds: a process waiting for a dead peer
# in a collective would otherwise wait for minutes. SIGINT or SIGTERM sent to the launcher (Ctrl-C,
# a test, a scheduler) is forwarded once to every process, so each can save its checkpoint;
# SIGHUP (the terminal closed) is forwarded as SIGTERM.
#
# Environment:
#   CRATE_JAX_PYTHON          the Python interpreter to run (default: python3)
#   JAX_PLATFORMS             passed on; set to `cpu` when unset
#   XLA_FLAGS                 passed on (plus --devices-per-process, when given)
#   CRATE_JAX_KILL_AFTER_S    seconds between SIGTERM and SIGKILL after a failure (default: 10)
#   TMPDIR                    parent of the default log folder (default: /tmp)
#
# Example (2 processes of 2 CPU devices each):
#   launch/local_multiprocess.sh 2 --devices-per-process 2 -- --config=configs/crate.py \
#       --workdir=runs/crate_2proc --config.stages=train --config.train.num_steps=20
# (a multi-process job trains only; run --config.stages=interp afterwards as one process)
set -euo pipefail
# Self-contained on purpose (no shared shell library): each launch script is copied and run alone.

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }

# One shell word, quoted only where it needs it, so that the printed commands paste into a shell.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
    else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_words() {
    local words=() word
    for word in "$@"; do words+=("$(quote "$word")"); done
    printf '%s\n' "${words[*]}"
}

[[ ${1:-} == --help || ${1:-} == -h ]] && { usage; exit 0; }
[[ $# -ge 1 ]] || die "give the number of processes first: local_multiprocess.sh N [options] -- <main arguments>"
[[ $1 =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$1': local_multiprocess.sh N [options] -- <main arguments>"
num_processes=$1
shift

port="" log_dir="" devices_per_process="" dry_run=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --) shift; break ;;
        --dry-run) dry_run=1; shift ;;
        --help|-h) usage; exit 0 ;;
        --port|--log-dir|--devices-per-process)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            case $1 in
                --port) port=$2 ;;
                --log-dir) log_dir=$2 ;;
                --devices-per-process) devices_per_process=$2 ;;
            esac
            shift 2 ;;
        *) die "unknown option '$1'; put crate_jax.main's arguments after --" ;;
    esac
done
main_args=("$@")

python=${CRATE_JAX_PYTHON:-python3}
kill_after_s=${CRATE_JAX_KILL_AFTER_S:-10}
[[ -z $port || $port =~ ^[1-9][0-9]*$ ]] || die "--port must be a port number, not '$port'"
[[ -z $devices_per_process || $devices_per_process =~ ^[1-9][0-9]*$ ]] ||
    die "--devices-per-process must be a positive integer, not '$devices_per_process'"
[[ $kill_after_s =~ ^[0-9]+$ ]] || die "CRATE_JAX_KILL_AFTER_S must be a whole number of seconds, not '$kill_after_s'"
[[ ${#main_args[@]} -gt 0 ]] || die "no crate_jax.main arguments: add -- --config=... --workdir=..."

if [[ -z $port ]]; then
    # Port 0 asks the kernel for a free one; it stays free in practice until process 0 binds it.
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
        die "could not pick a free port with $python; give --port"
fi
log_dir=${log_dir:-${TMPDIR:-/tmp}/crate_jax_$port}

export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if [[ -n $devices_per_process ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices_per_process"
fi

process_command() {  # process id -> the command, in the array `command`
    command=("$python" -m crate_jax.main "${main_args[@]}" "--coordinator_address=127.0.0.1:$port"
             "--num_processes=$num_processes" "--process_id=$1")
}

environment=("JAX_PLATFORMS=$JAX_PLATFORMS")
[[ -n ${XLA_FLAGS:-} ]] && environment+=("XLA_FLAGS=$XLA_FLAGS")

if ((dry_run)); then
    echo "# $num_processes processes; process 0 prints here, process i>0 logs to $log_dir/process_<i>.log"
    for ((i = 0; i < num_processes; i++)); do
        process_command "$i"
        quote_words "${environment[@]}" "${command[@]}"
    done
    exit 0
fi

mkdir -p "$log_dir"
echo "local_multiprocess.sh: $num_processes processes, coordinator 127.0.0.1:$port; processes 1..$((num_processes - 1)) log to $log_dir/process_<i>.log" >&2

declare -A process_of=()  # pid -> process id, for the processes still running
start() {
    # `set -m` only while forking: the child gets its own process group, so a Ctrl-C at the
    # terminal reaches the launcher alone (which forwards it once), and it does not inherit the
    # SIGINT-ignored state that non-interactive bash gives background jobs.
    set -m
    if (($1 == 0)); then "${command[@]}" < /dev/null &
    else "${command[@]}" < /dev/null > "$log_dir/process_$1.log" 2>&1 &
    fi
    set +m
    process_of[$!]=$1
}

first_failure=""   # exit code of the first process that failed (or was stopped by a signal)
stopping=0         # a signal was forwarded, or the others were told to stop after a failure
kill_at=""         # when (microseconds since the epoch) the processes left after a failure get SIGKILL

signal_all() {  # signal -> every process still running
    local pid
    for pid in "${!process_of[@]}"; do kill -s "$1" "$pid" 2> /dev/null || true; done
}
forward() {
    echo "local_multiprocess.sh: forwarding SIG$1 to ${#process_of[@]} process(es)" >&2
    stopping=1
    signal_all "$1"
}
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward TERM' HUP  # the terminal went away: stop cleanly rather than run on unseen

finished() {  # pid, exit code: one process ended
    local process=${process_of[$1]}
    unset "process_of[$1]"
    (($2 == 0)) && return
    [[ -n $first_failure ]] || first_failure=$2
    ((stopping)) && return
    stopping=1
    echo "local_multiprocess.sh: process $process exited with code $2; stopping the other processes" >&2
    if ((process > 0)); then
        echo "local_multiprocess.sh: the end of $log_dir/process_$process.log:" >&2
        tail -n 20 "$log_dir/process_$process.log" >&2 || true
    fi
    signal_all TERM
    # A process blocked in a collective with a dead peer never reaches its SIGTERM handler.
    kill_at=$((${EPOCHREALTIME//[!0-9]/} + kill_after_s * 1000000))
}

for ((i = 0; i < num_processes; i++)); do
    process_command "$i"
    start "$i"
done

# Polled rather than `wait -n`: bash forgets a job killed by a signal once it has reported it, and
# `wait -n` then fails for it, while `wait PID` still returns the status of any child it reaped.
while ((${#process_of[@]} > 0)); do
    for pid in "${!process_of[@]}"; do
        kill -0 "$pid" 2> /dev/null && continue
        status=0
        wait "$pid" 2> /dev/null || status=$?
        finished "$pid" "$status"
    done
    if [[ -n $kill_at ]] && ((${EPOCHREALTIME//[!0-9]/} >= kill_at && ${#process_of[@]} > 0)); then
        echo "local_multiprocess.sh: ${#process_of[@]} process(es) still running ${kill_after_s}s after SIGTERM; sending SIGKILL" >&2
        signal_all KILL
        kill_at=""
    fi
    ((${#process_of[@]} > 0)) || break
    sleep 0.2 &
    wait $! 2> /dev/null || true  # returns early when a signal arrives, so the trap runs at once
done
exit "${first_failure:-0}"
