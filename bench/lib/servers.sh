# Starting, probing, measuring and stopping the servers under test. Sourced by bench/run.sh.
#
# Owns each server instance's config, port, process and run folder, the time from start to
# the first response, and RSS and CPU readings from /proc. The scenarios and the report live in
# scenarios.sh and report.sh. Expects WORK, VIDEOS, STREAMSERVER_BIN, NGINX_BIN, GOREF_BIN and
# BENCH_DIR to be set, and the functions to run in the main shell (not in `$(...)`), so that
# the started processes stay its children.

declare -A SERVER_PID=() SERVER_PORT=() SERVER_KIND=()
declare -A USED_PORTS=()

# A file descriptor that never becomes readable, so `read -t` on it sleeps without a fork.
exec {SLEEP_FD}<> <(:)

sleep_briefly() {
    read -r -t "$1" -u "$SLEEP_FD" _ || true
}

now_us() {
    local now=${EPOCHREALTIME/./}
    echo "$((10#$now))"
}

# Sets FREE_PORT to a loopback port that nothing listens on and that no instance of this
# run was given. Ports come from below the ephemeral range, because a client connection's
# local port there makes bind() fail with "Address already in use".
pick_free_port() {
    local port probe ephemeral_low
    read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range
    ((ephemeral_low > 11000)) || fail "the ephemeral port range starts at $ephemeral_low; raise it above 11000"
    while :; do
        port=$((10000 + RANDOM % (ephemeral_low - 10000)))
        [[ -z ${USED_PORTS[$port]:-} ]] || continue
        if ! { exec {probe}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
            USED_PORTS[$port]=1
            FREE_PORT=$port
            return
        fi
        exec {probe}<&-
    done
}

# Sends GET /videos/ready.mp4 on a new connection; succeeds on a 200 status line.
probe_ready() {
    local port=$1 fd status=""
    { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
    printf 'GET /videos/ready.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&"$fd" 2>/dev/null || true
    IFS= read -r -t 2 -u "$fd" status || true
    exec {fd}<&-
    [[ $status == "HTTP/1."?" 200 "* ]]
}

write_streamserver_config() {
    local run=$1 port=$2 max_conns=$3
    cat >"$run/conf.json" <<JSON
{
  "listen": "127.0.0.1:$port",
  "video_dir": "$VIDEOS",
  "max_conns": $max_conns,
  "max_conns_per_ip": $max_conns,
  "max_upload_bytes": $MAX_UPLOAD_BYTES,
  "shutdown_grace_secs": 2
}
JSON
}

write_nginx_config() {
    local run=$1 port=$2
    sed -e "s#@RUN@#$run#g; s#@PORT@#$port#g; s#@VIDEOS@#$VIDEOS#g" \
        -e "s#@UPLOADS@#$run/uploads#g; s#@MAX_UPLOAD@#$MAX_UPLOAD_BYTES#g" \
        "$BENCH_DIR/nginx.conf.tmpl" >"$run/nginx.conf"
}

write_goref_config() {
    local run=$1 max_conns=$2
    printf 'video_dir = "%s"\nupload_dir = "%s"\nmax_upload_bytes = %s\nmax_conns = %s\n' \
        "$VIDEOS" "$run/uploads" "$MAX_UPLOAD_BYTES" "$max_conns" >"$run/goref.conf"
}

# Starts INSTANCE, a server of KIND (streamserver, nginx or goref) with MAX_CONNS tokens,
# waits for its first 200 response, and records the time that took for ROUND.
start_server() {
    local instance=$1 kind=$2 max_conns=$3 round=$4
    local run="$WORK/run/$instance" port command=()
    rm -rf "$run"
    mkdir -p "$run/uploads"
    pick_free_port
    port=$FREE_PORT

    case $kind in
        streamserver)
            write_streamserver_config "$run" "$port" "$max_conns"
            command=(env RUST_LOG=warn "$STREAMSERVER_BIN" --config "$run/conf.json")
            ;;
        nginx)
            write_nginx_config "$run" "$port"
            command=("$NGINX_BIN" -c "$run/nginx.conf" -p "$run/" -e "$run/error.log")
            ;;
        goref)
            write_goref_config "$run" "$max_conns"
            command=("$GOREF_BIN" --config "$run/goref.conf" --port "$port")
            ;;
        *) fail "unknown server kind: $kind (streamserver, nginx or goref)" ;;
    esac

    local started_us pid
    started_us=$(now_us)
    setsid "${command[@]}" >"$run/server.log" 2>&1 </dev/null &
    pid=$!
    SERVER_PID[$instance]=$pid SERVER_PORT[$instance]=$port SERVER_KIND[$instance]=$kind

    wait_until_ready "$instance"
    local startup_us=$(($(now_us) - started_us))
    record "$round" "$instance" startup_ms "$(awk -v us="$startup_us" 'BEGIN { printf "%.1f", us / 1000 }')"
}

# Probes every millisecond or so until the server responds with 200, for at most 10 s.
wait_until_ready() {
    local instance=$1 pid=${SERVER_PID[$1]} port=${SERVER_PORT[$1]}
    local deadline=$(($(now_us) + 10000000))
    until probe_ready "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            fail "$instance exited during startup; its log says: $(tail -n 5 "$WORK/run/$instance/server.log")"
        fi
        (($(now_us) < deadline)) || fail "$instance did not answer GET /videos/ready.mp4 within 10 s"
        sleep_briefly 0.001
    done
}

# Stops INSTANCE with SIGTERM, or SIGKILL when it has not exited after 15 s.
stop_server() {
    local instance=$1 pid=${SERVER_PID[$1]:-}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local tries=0
    while kill -0 "$pid" 2>/dev/null && ((tries < 150)); do
        sleep_briefly 0.1
        tries=$((tries + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "SERVER_PID[$instance]"
}

stop_all_servers() {
    local instance
    for instance in "${!SERVER_PID[@]}"; do
        stop_server "$instance"
    done
}

server_url() {
    echo "http://127.0.0.1:${SERVER_PORT[$1]}"
}

# Prints the PID of INSTANCE and of its child processes (nginx's workers).
process_tree() {
    local pid=${SERVER_PID[$1]}
    echo "$pid"
    ps -o pid= --ppid "$pid" 2>/dev/null || true
}

# Prints the sum of a /proc/PID/status field (VmRSS, VmHWM) over the process tree, in KiB.
sum_status_kib() {
    local instance=$1 field=$2 pid total=0 value
    for pid in $(process_tree "$instance"); do
        value=$(awk -v field="$field:" '$1 == field { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

rss_kib() {
    sum_status_kib "$1" VmRSS
}

# Prints the CPU time (user + system) that INSTANCE's processes have used, in milliseconds.
cpu_ms() {
    local pid ticks total=0 hz
    hz=$(getconf CLK_TCK)
    for pid in $(process_tree "$1"); do
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the command name.
        ticks=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        total=$((total + ${ticks:-0}))
    done
    echo $((total * 1000 / hz))
}

# Resets the peak RSS (VmHWM) of every process of INSTANCE to its current RSS (Linux 4.0+).
reset_peak_rss() {
    local pid
    for pid in $(process_tree "$1"); do
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    done
}

# Prints the sum of the per-process peaks since the last reset_peak_rss, in KiB. For nginx
# this adds the master's and each worker's peak, which can exceed the true peak of the sum.
peak_rss_kib() {
    sum_status_kib "$1" VmHWM
}
