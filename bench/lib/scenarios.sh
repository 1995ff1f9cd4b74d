# The load scenarios S1 to S5, each run against one server instance. Sourced by bench/run.sh.
#
# Owns the client commands (curl, wrk), the checks that each response was complete, and the
# figures recorded per round. Starting servers and reading RSS is servers.sh's job, and turning
# the records into medians is report.sh's. Sizes come from run.sh: S1_BYTES, S2_SECS,
# S3_BYTES, S3_CLIENTS, S4_BYTES. Bytes per second are reported in MB/s, 1 MB = 10^6 bytes.

readonly CURL_TIMEOUT_SECS=300

# Per-download rate in the max_conns 20 run, so the 20 downloads that got a token are still
# running when the last of the 100 curl processes connects (starting 100 processes takes over
# a second on a loaded 2-core machine). At 10 MB/s a 100 MB download takes 10 s.
readonly LIMITED_RATE=10M

# S1: one download of the whole s1.mp4 on one connection; records MB/s and the server's CPU
# time.
run_s1() {
    local instance=$1 round=$2 code size secs cpu_before
    cpu_before=$(cpu_ms "$instance")
    read -r code size secs < <(curl -s -o /dev/null --max-time "$CURL_TIMEOUT_SECS" \
        -w '%{http_code} %{size_download} %{time_total}\n' "$(server_url "$instance")/videos/s1.mp4")

    if [[ $code != 200 || $size != "$S1_BYTES" ]]; then
        check_failed "$instance" "S1 download gave status $code with $size of $S1_BYTES bytes"
        return
    fi
    record "$round" "$instance" s1_mbps "$(mb_per_sec "$size" "$secs")"
    record "$round" "$instance" s1_cpu_ms $(($(cpu_ms "$instance") - cpu_before))
}

# S2: random 64 KiB ranges of s1.mp4 over 20 keep-alive connections (wrk), the peak RSS
# during the run and the server's CPU time per request.
run_s2() {
    local instance=$1 round=$2
    local out="$WORK/s2-$instance-$round.txt"
    reset_peak_rss "$instance"
    local cpu_before
    cpu_before=$(cpu_ms "$instance")
    timeout $((S2_SECS + 60)) wrk -t2 -c20 -d"${S2_SECS}s" --timeout 10s -s "$BENCH_DIR/ranges.lua" \
        "$(server_url "$instance")/videos/s1.mp4" -- "$S1_BYTES" 65536 >"$out"
    local cpu_used=$(($(cpu_ms "$instance") - cpu_before))
    record "$round" "$instance" s2_peak_rss_kib "$(peak_rss_kib "$instance")"
    record "$round" "$instance" s2_cpu_us_per_request \
        "$(awk -v ms="$cpu_used" '$1 == "requests" && $2 > 0 { printf "%.1f", ms * 1000 / $2 }' "$out")"

    local failures
    failures=$(awk '$1 == "non_2xx_3xx" || $1 == "socket_errors" { n += $2 } END { print n + 0 }' "$out")
    if ((failures > 0)); then
        check_failed "$instance" "S2 had $failures failed requests (non-2xx/3xx or socket errors)"
    fi
    record "$round" "$instance" s2_failures "$failures"
    record "$round" "$instance" s2_rps "$(awk '$1 == "requests_per_sec" { print $2 }' "$out")"
    record "$round" "$instance" s2_p99_ms "$(awk '$1 == "p99_ms" { print $2 }' "$out")"
}

# Starts S3_CLIENTS downloads of s3.mp4 at once, each its own curl process and connection,
# and waits for all. Writes one "status bytes seconds" line per download to OUT and prints
# the wall-clock seconds from the first start to the last end. Extra arguments go to curl.
parallel_downloads() {
    local instance=$1 out=$2 url pids=() i started_us
    shift 2
    url="$(server_url "$instance")/videos/s3.mp4"
    : >"$out"

    started_us=$(now_us)
    for ((i = 0; i < S3_CLIENTS; i++)); do
        curl -s -o /dev/null --max-time "$CURL_TIMEOUT_SECS" "$@" \
            -w '%{http_code} %{size_download} %{time_total}\n' "$url" >>"$out" &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    awk -v us="$(($(now_us) - started_us))" 'BEGIN { printf "%.6f", us / 1e6 }'
}

# S3: S3_CLIENTS concurrent downloads of s3.mp4 from a server with max_conns 128; records the
# aggregate MB/s (complete downloads' bytes over the wall-clock time), how many completed and
# the server's CPU time.
run_s3() {
    local instance=$1 round=$2
    local out="$WORK/s3-$instance-$round.txt" wall complete bytes cpu_before
    cpu_before=$(cpu_ms "$instance")
    wall=$(parallel_downloads "$instance" "$out")
    record "$round" "$instance" s3_cpu_ms $(($(cpu_ms "$instance") - cpu_before))
    complete=$(awk -v n="$S3_BYTES" '$1 == 200 && $2 == n { c++ } END { print c + 0 }' "$out")
    bytes=$(awk -v n="$S3_BYTES" '$1 == 200 && $2 == n { b += $2 } END { printf "%.0f", b }' "$out")

    if ((complete != S3_CLIENTS)); then
        check_failed "$instance" "S3 completed $complete of $S3_CLIENTS downloads"
    fi
    record "$round" "$instance" s3_complete "$complete"
    record "$round" "$instance" s3_mbps "$(mb_per_sec "$bytes" "$wall")"
}

# S3 at max_conns 20: the same downloads, each limited to LIMITED_RATE, against a server with
# 20 tokens. Exactly 20 should complete and every other one should get 429 at once. Records
# both counts and the median and slowest time to a 429, in milliseconds.
run_s3_limited() {
    local instance=$1 round=$2
    local out="$WORK/s3-limited-$instance-$round.txt"
    parallel_downloads "$instance" "$out" --limit-rate "$LIMITED_RATE" >/dev/null

    local complete rejected other slowest median
    complete=$(awk -v n="$S3_BYTES" '$1 == 200 && $2 == n { c++ } END { print c + 0 }' "$out")
    rejected=$(awk '$1 == 429 { c++ } END { print c + 0 }' "$out")
    other=$((S3_CLIENTS - complete - rejected))
    slowest=$(awk '$1 == 429 && $3 > max { max = $3 } END { printf "%.1f", max * 1000 }' "$out")
    median=$(awk '$1 == 429 { print $3 }' "$out" | sort -g |
        awk '{ v[++n] = $1 } END { if (n) printf "%.1f", 1000 * ((n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) }')

    if ((complete != 20 || other != 0)); then
        check_failed "$instance" "S3 at max_conns 20: $complete complete, $rejected got 429, $other other"
    fi
    # Recorded under the server kind, so the table shows them in the streamserver and goref
    # columns next to the max_conns 128 figures.
    local kind=${SERVER_KIND[$instance]}
    record "$round" "$kind" s3_limited_complete "$complete"
    record "$round" "$kind" s3_limited_429 "$rejected"
    record "$round" "$kind" s3_limited_slowest_429_ms "$slowest"
    [[ -z $median ]] || record "$round" "$kind" s3_limited_median_429_ms "$median"
}

# Prints where INSTANCE stored the upload ID.
stored_upload_path() {
    local instance=$1 id=$2 run="$WORK/run/$1"
    case ${SERVER_KIND[$instance]} in
        streamserver) echo "$VIDEOS/$id" ;;
        goref) echo "$run/uploads/$id" ;;
        # nginx names the body file itself, with a number.
        nginx) find "$run/uploads" -type f | head -n 1 ;;
    esac
}

# S4: one multipart/form-data upload of upload.bin in field "file". Records MB/s of file bytes
# over the request time, and the server's peak RSS and CPU time during the upload. The stored
# copy is removed afterwards.
run_s4() {
    local instance=$1 round=$2 id="upload-$1-$2.mp4" code secs cpu_before
    reset_peak_rss "$instance"
    cpu_before=$(cpu_ms "$instance")
    read -r code secs < <(curl -s -o "$WORK/s4-answer.txt" --max-time "$CURL_TIMEOUT_SECS" \
        -w '%{http_code} %{time_total}\n' -F "file=@$WORK/upload.bin;type=video/mp4" \
        "$(server_url "$instance")/upload/$id")
    record "$round" "$instance" s4_peak_rss_kib "$(peak_rss_kib "$instance")"
    record "$round" "$instance" s4_cpu_ms $(($(cpu_ms "$instance") - cpu_before))

    local stored stored_size=0
    stored=$(stored_upload_path "$instance" "$id")
    [[ -n $stored && -f $stored ]] && stored_size=$(stat -c %s "$stored")
    [[ -n $stored ]] && rm -f "$stored"

    if [[ $code != 201 ]] || ((stored_size < S4_BYTES)); then
        check_failed "$instance" "S4 upload gave status $code and stored $stored_size of $S4_BYTES bytes"
        return
    fi
    record "$round" "$instance" s4_mbps "$(mb_per_sec "$S4_BYTES" "$secs")"
}

# S5 at idle: RSS right after startup and the readiness request, before any load, recorded
# as METRIC under NAME.
run_s5_idle() {
    local instance=$1 round=$2 name=${3:-$1} metric=${4:-idle_rss_kib}
    record "$round" "$name" "$metric" "$(rss_kib "$instance")"
}

mb_per_sec() {
    awk -v bytes="$1" -v secs="$2" 'BEGIN { printf "%.1f", (secs > 0) ? bytes / secs / 1e6 : 0 }'
}
