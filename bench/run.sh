#!/usr/bin/env bash
# Side-by-side benchmark of streamserver, nginx and the Go reference server (goref).
#
# Builds the release binary, writes test files to a temporary folder and starts each server on
# a free loopback port. Each round runs every scenario against each server in turn, and the
# order rotates every round (A B C, then B C A, ...). Prints one Markdown table of the medians
# over rounds, the ratios streamserver/peer and the targets. BENCHMARKS.md explains the
# scenarios and what limits each figure.
#
#   S1  one download of s1.mp4 (1 GiB) on one connection, curl
#   S2  random 64 KiB ranges of s1.mp4, 20 keep-alive connections, 10 s, wrk
#   S3  100 concurrent downloads of s3.mp4 (100 MB) at max_conns 128, one curl each; then
#       the same at 10 MB/s each against max_conns 20 for streamserver and goref (20
#       complete, 80 get 429)
#   S4  one multipart/form-data upload of upload.bin (512 MiB), curl -F
#   S5  RSS after startup, and peak RSS under S2 and S4
#   Server CPU time (user + system, from /proc) is recorded for S1 to S4.
#
# Usage: bench/run.sh [--quick] [--rounds N]
#   --quick     1 round with S1 256 MiB, S2 3 s and S4 64 MiB; takes about 90 s
#   --rounds N  rounds to run (default 3, or 1 with --quick)
#
# Environment:
#   STREAMSERVER_BIN  use this binary instead of building target/release/streamserver
#   PEERS_BIN         folder of the goref binary (default /tmp/peers-bin)
#   TMPDIR            where the temporary folder goes; it needs about 2 GiB free
#   BENCH_KEEP_WORK   set to keep the temporary folder (server logs, raw client output)
#
# Needs curl, wrk and nginx, which are installed with apt-get when missing and running as root.
# goref is built by setup.sh in PEERS_DIR (the shared/peers folder beside the repository) when
# that exists, and skipped with a note when not. Every server listens on 127.0.0.1 only, and
# every client command has a time limit.
set -euo pipefail
export LC_ALL=C

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$BENCH_DIR")"
PEERS_DIR="$REPO_ROOT/../shared/peers"
readonly MAX_UPLOAD_BYTES=$((1 << 30))

fail() {
    echo "bench: $*" >&2
    exit 1
}

note() {
    echo "bench: $*" >&2
}

source "$BENCH_DIR/lib/servers.sh"
source "$BENCH_DIR/lib/scenarios.sh"
source "$BENCH_DIR/lib/report.sh"

parse_args() {
    QUICK=0
    ROUNDS=""
    while (($#)); do
        case $1 in
            --quick) QUICK=1 ;;
            --rounds)
                [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || fail "--rounds needs a positive whole number, got '${2:-}'"
                ROUNDS=$2
                shift
                ;;
            -h | --help)
                sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
                exit 0
                ;;
            *) fail "unknown argument '$1'; see --help" ;;
        esac
        shift
    done
}

set_sizes() {
    S3_BYTES=100000000
    S3_CLIENTS=100
    if ((QUICK)); then
        S1_BYTES=$((256 << 20)) S2_SECS=3 S4_BYTES=$((64 << 20))
        ROUNDS=${ROUNDS:-1}
    else
        S1_BYTES=$((1 << 30)) S2_SECS=10 S4_BYTES=$((512 << 20))
        ROUNDS=${ROUNDS:-3}
    fi
}

install_missing_tools() {
    local missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx)
    ((${#missing[@]})) || return 0

    ((EUID == 0)) || fail "missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    note "installing ${missing[*]} with apt-get"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Sets GOREF_BIN after building goref with PEERS_DIR/setup.sh, or to "" when that fails or is
# missing.
prepare_goref() {
    GOREF_BIN=""
    if [[ ! -f $PEERS_DIR/setup.sh ]]; then
        note "goref skipped: $PEERS_DIR/setup.sh not found, so the table has no goref column"
        return
    fi
    if ! bash "$PEERS_DIR/setup.sh" >"$WORK/peers-setup.log" 2>&1; then
        note "goref skipped: $PEERS_DIR/setup.sh failed; see the end of its log:"
        tail -n 5 "$WORK/peers-setup.log" >&2
        return
    fi
    GOREF_BIN="${PEERS_BIN:-/tmp/peers-bin}/goref"
}

build_streamserver() {
    if [[ -n ${STREAMSERVER_BIN:-} ]]; then
        [[ -x $STREAMSERVER_BIN ]] || fail "STREAMSERVER_BIN=$STREAMSERVER_BIN is not an executable file"
        STREAMSERVER_BIN=$(realpath "$STREAMSERVER_BIN")
        return
    fi
    note "building the release binary (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release --quiet) || fail "cargo build --release failed"
    STREAMSERVER_BIN="$REPO_ROOT/target/release/streamserver"
}

# Writes the test files with random content and reads them once so they are in the page cache.
generate_data() {
    local need_kib=$(((S1_BYTES + S3_BYTES + 2 * S4_BYTES) / 1024 + 65536))
    local free_kib
    free_kib=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
    ((free_kib > need_kib)) || fail "$WORK has $((free_kib / 1024)) MiB free and the run needs $((need_kib / 1024)) MiB; set TMPDIR"

    VIDEOS="$WORK/videos"
    mkdir -p "$VIDEOS"
    printf x >"$VIDEOS/ready.mp4"
    head -c "$S1_BYTES" /dev/urandom >"$VIDEOS/s1.mp4"
    head -c "$S3_BYTES" /dev/urandom >"$VIDEOS/s3.mp4"
    head -c "$S4_BYTES" /dev/urandom >"$WORK/upload.bin"
    cat "$VIDEOS/s1.mp4" "$VIDEOS/s3.mp4" "$WORK/upload.bin" >/dev/null
}

print_machine() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "sizes: S1 $S1_BYTES B, S2 ${S2_SECS} s, S3 $S3_CLIENTS x $S3_BYTES B, S4 $S4_BYTES B; rounds: $ROUNDS"
    echo "streamserver: $STREAMSERVER_BIN ($(stat -c %s "$STREAMSERVER_BIN") bytes)"
    echo "nginx: $($NGINX_BIN -v 2>&1 | sed 's/^nginx version: //'); goref: ${GOREF_BIN:-skipped}"
    echo "wrk: $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f2); curl: $(curl --version | head -n 1 | cut -d' ' -f2)"
}

# Prints SERVERS rotated left by N places.
rotated() {
    local n=$1 count=${#SERVERS[@]} i
    for ((i = 0; i < count; i++)); do
        echo "${SERVERS[$(((i + n) % count))]}"
    done
}

run_round() {
    local round=$1 order server scenario
    mapfile -t order < <(rotated $((round - 1)))
    note "round $round of $ROUNDS: order ${order[*]}"

    for server in "${order[@]}"; do
        start_server "$server" "$server" 128 "$round"
        run_s5_idle "$server" "$round"
    done
    for scenario in run_s1 run_s2 run_s3 run_s4; do
        for server in "${order[@]}"; do
            note "round $round: ${scenario#run_} on $server"
            "$scenario" "$server" "$round"
        done
    done
    stop_all_servers

    for server in "${order[@]}"; do
        [[ $server != nginx ]] || continue
        note "round $round: idle RSS and s3 at max_conns 20 on $server"
        start_server "$server-20" "$server" 20 "$round"
        run_s5_idle "$server-20" "$round" "$server" idle_rss_20_kib
        run_s3_limited "$server-20" "$round"
        stop_server "$server-20"
    done
}

cleanup() {
    stop_all_servers
    if [[ -n ${WORK:-} && -z ${BENCH_KEEP_WORK:-} ]]; then
        rm -rf "$WORK"
    elif [[ -n ${WORK:-} ]]; then
        note "kept $WORK"
    fi
}

main() {
    parse_args "$@"
    set_sizes
    install_missing_tools
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/streamserver-bench.XXXXXX")
    # nginx workers run as an unprivileged user and must read the videos.
    chmod 755 "$WORK"
    trap cleanup EXIT
    RESULTS="$WORK/results.tsv" CHECKS="$WORK/checks.txt"
    : >"$RESULTS"
    : >"$CHECKS"

    build_streamserver
    prepare_goref
    SERVERS=(streamserver nginx)
    [[ -z $GOREF_BIN ]] || SERVERS+=(goref)
    generate_data
    print_machine

    local round
    for ((round = 1; round <= ROUNDS; round++)); do
        run_round "$round"
    done

    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    print_table
    echo
    if [[ -s $CHECKS ]]; then
        echo "failed checks (S1 and S4 figures of a failed run are left out of the table):"
        sed 's/^/  /' "$CHECKS"
        exit 1
    fi
    echo "all checks passed"
}

main "$@"
