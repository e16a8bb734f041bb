#!/usr/bin/env bash
# Train crate_jax on a Cloud TPU VM slice (one host or a pod): create the slice or reuse it,
# copy and install crate_jax on every worker, start the same command on all of them (JAX finds
# the other workers of a TPU slice by itself), and stream worker 0's log here.
#
# Usage:
#   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator-type TYPE [options] \
#       -- <crate_jax.main arguments...>
#
# Arguments:
#   --name NAME               the TPU VM's name
#   --zone ZONE               its zone (us-central2-b for v4, ...)
#   --accelerator-type TYPE   v4-32, v5litepod-16, v5p-8, v6e-16, ... (checked against a reused one)
#   --version V               TPU software version for a new slice (default: tpu-ubuntu2204-base;
#                             v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p,
#                             v2-alpha-tpuv6e for v6e)
#   --project P               Google Cloud project (default: gcloud's configured one)
#   --repo PATH_OR_URL        the crate_jax to install: a local git checkout, copied with its
#                             uncommitted and untracked (not ignored) files, or a git URL cloned
#                             on every worker (default: the checkout holding this script)
#   --reuse                   run on the slice NAME if it exists (without it, an existing slice
#                             stops the script, so a typo cannot take over someone else's)
#   --dry-run                 print every command, run none (needs neither gcloud nor a project)
#   --help                    print this text
# Everything after `--` goes to crate_jax.main on every worker unchanged, run from the copy of
# the repository (~/crate_jax), so config paths like configs/crate.py work as they do here.
# --workdir must be a folder every worker mounts (NFS/Filestore, a gcsfuse-mounted bucket): each
# worker writes its part of every checkpoint there, and process 0 the metrics and reports.
#
# On every worker: ~/crate_jax (the source), ~/crate_jax_venv (Python 3.11 from uv, with
# jax[tpu] and crate_jax; made once, kept for the next run), ~/crate_jax_run.log, .pid, .exit.
# Ctrl-C stops the streaming, not the run; the script prints how to stop the run and how to
# follow it again. It exits with worker 0's exit code.
#
# Environment: TMPDIR (where the source archive is packed, default /tmp). gcloud must be logged
# in, and `ssh-add` must hold your Google Compute Engine key for commands on all workers.
#
# Example:
#   launch/tpu_pod.sh --name crate-v4 --zone us-central2-b --accelerator-type v4-32 -- \
#       --config=configs/crate.py:b --workdir=/mnt/shared/runs/crate_b --config.stages=train
set -euo pipefail
# Self-contained on purpose (no shared shell library): each launch script is copied and run alone.

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

# One shell word, quoted only where it needs it, so that the printed commands paste into a shell
# (and the main arguments survive the worker's shell).
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
    else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_words() {
    local words=() word
    for word in "$@"; do words+=("$(quote "$word")"); done
    printf '%s\n' "${words[*]}"
}

name="" zone="" accelerator_type="" version=tpu-ubuntu2204-base project="" repo="" reuse=0 dry_run=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --) shift; break ;;
        --dry-run) dry_run=1; shift ;;
        --reuse) reuse=1; shift ;;
        --help|-h) usage; exit 0 ;;
        --name|--zone|--accelerator-type|--version|--project|--repo)
            [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
            case $1 in
                --name) name=$2 ;;
                --zone) zone=$2 ;;
                --accelerator-type) accelerator_type=$2 ;;
                --version) version=$2 ;;
                --project) project=$2 ;;
                --repo) repo=$2 ;;
            esac
            shift 2 ;;
        *) die "unknown option '$1'; put crate_jax.main's arguments after --" ;;
    esac
done
main_args=("$@")
for required in name zone accelerator_type; do
    [[ -n ${!required} ]] || die "--${required//_/-} is required: tpu_pod.sh --name NAME --zone ZONE --accelerator-type TYPE -- <main arguments>"
done
[[ ${#main_args[@]} -gt 0 ]] || die "no crate_jax.main arguments: add -- --config=... --workdir=..."
repo=${repo:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [[ -d $repo ]]; then
    git -C "$repo" rev-parse --show-toplevel > /dev/null 2>&1 ||
        die "--repo $repo is not a git checkout; give a checkout or a git URL"
    repo=$(cd "$repo" && pwd)
    archive=${TMPDIR:-/tmp}/crate_jax_source_$name.tar.gz
elif [[ $repo == /* || $repo == .* || $repo == ~* ]]; then
    die "--repo $repo: no such folder; give a git checkout or a git URL"
fi

tpu_vm=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")

run() {  # a command: printed in a dry run, run otherwise
    if ((dry_run)); then quote_words "$@"; else "$@"; fi
}
step() {  # what the next command is for
    if ((dry_run)); then echo "# $*"; else echo "tpu_pod.sh: $*" >&2; fi
}

# Remote commands, run by each worker's shell. The run's wrapper shell records the exit code
# (the streaming step returns it) and, by trapping SIGTERM, outlives a stop request until
# crate_jax.main has saved its checkpoint; setsid makes the pid file's number a process group.
# "Running" asks the process's command line, not only its pid: after a restart the number may
# belong to another program, and an exited run's process may linger as a zombie.
running='running() { ps -o args= -p "$(cat ~/crate_jax_run.pid 2> /dev/null || echo 0)" 2> /dev/null | grep -q crate_jax.main; }'
still_running="$running; if running; then echo \"a crate_jax run is still going on \$(hostname); stop it first\" >&2; exit 1; fi"
if [[ -d $repo ]]; then
    get_source="rm -rf ~/crate_jax; mkdir ~/crate_jax; tar -xzf ~/crate_jax.tar.gz -C ~/crate_jax; rm ~/crate_jax.tar.gz"
else
    get_source="rm -rf ~/crate_jax; git clone --quiet --depth=1 $(quote "$repo") ~/crate_jax"
fi
install_command="set -e; $still_running; $get_source; if [ ! -x ~/crate_jax_venv/bin/python ]; then python3 -m pip install --quiet --user uv; ~/.local/bin/uv venv --quiet --python 3.11 ~/crate_jax_venv; fi; ~/.local/bin/uv pip install --quiet --python ~/crate_jax_venv/bin/python 'jax[tpu]' -e ~/crate_jax"
start_command="set -e; $still_running; cd ~/crate_jax; rm -f ~/crate_jax_run.exit; setsid nohup bash -c 'trap true TERM INT; ~/crate_jax_venv/bin/python -m crate_jax.main \"\$@\"; echo \$? > ~/crate_jax_run.exit' crate_jax $(quote_words "${main_args[@]}") > ~/crate_jax_run.log 2>&1 < /dev/null & echo \$! > ~/crate_jax_run.pid"
# tail stops once a helper that waits for the run has gone, after printing the log's last lines.
follow_command="$running; while running; do sleep 1; done & tail -n +1 --pid=\$! -f ~/crate_jax_run.log; if [ -f ~/crate_jax_run.exit ]; then exit \"\$(cat ~/crate_jax_run.exit)\"; fi; echo \"the run on worker 0 ended without an exit code (killed?)\" >&2; exit 1"
stop_command="$running; if running; then kill -TERM -- -\"\$(cat ~/crate_jax_run.pid)\"; else echo \"no crate_jax run on \$(hostname)\"; fi"

((dry_run)) || command -v gcloud > /dev/null || die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"

if ((dry_run)); then
    step "does TPU VM $name exist? (reused with --reuse; otherwise it must not exist yet)"
    run "${tpu_vm[@]}" describe "$name" "${where[@]}" '--format=value(acceleratorType)'
    step "if it does not:"
    run "${tpu_vm[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" --version="$version"
elif existing_type=$("${tpu_vm[@]}" describe "$name" "${where[@]}" '--format=value(acceleratorType)' 2> /dev/null); then
    ((reuse)) || die "TPU VM $name already exists in $zone; pass --reuse to run on it, or give another --name"
    [[ -z $existing_type || $existing_type == "$accelerator_type" ]] ||
        die "TPU VM $name is a $existing_type, not a $accelerator_type; give --accelerator-type $existing_type or another --name"
    step "reusing TPU VM $name ($existing_type)"
else
    step "creating TPU VM $name"
    run "${tpu_vm[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" --version="$version"
fi

if [[ -d $repo ]]; then
    step "pack $repo (tracked, and untracked but not ignored, files) and copy it to every worker"
    if ((dry_run)); then
        echo "git -C $(quote "$repo") ls-files -z --cached --others --exclude-standard | tar -czf $(quote "$archive") -C $(quote "$repo") --null --files-from=- --ignore-failed-read"
    else
        git -C "$repo" ls-files -z --cached --others --exclude-standard |
            tar -czf "$archive" -C "$repo" --null --files-from=- --ignore-failed-read
    fi
    run "${tpu_vm[@]}" scp "$archive" "$name:crate_jax.tar.gz" "${where[@]}" --worker=all
    ((dry_run)) || rm -f "$archive"
fi
step "install crate_jax on every worker"
run "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install_command"
step "start crate_jax.main on every worker"
run "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=all --command="$start_command"

stop=$(quote_words "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=all --command="$stop_command")
follow=$(quote_words "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=0 --command="$follow_command")
step "stream worker 0's log (Ctrl-C stops following, not the run)"
step "to stop the run (each worker saves a checkpoint): $stop"
step "to follow it again: $follow"
run "${tpu_vm[@]}" ssh "$name" "${where[@]}" --worker=0 --command="$follow_command"
