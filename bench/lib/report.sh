# Recording figures and printing the table of medians and ratios. Sourced by bench/run.sh.
#
# Each figure is one line "round<TAB>instance<TAB>metric<TAB>value" in RESULTS, and failed
# checks go to CHECKS. The table shows the median over rounds of each metric per server, and
# the ratio streamserver/peer of those medians. Which metrics exist and how they are measured is
# scenarios.sh's business.

record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}

check_failed() {
    echo "check failed: $1: $2" >&2
    printf '%s: %s\n' "$1" "$2" >>"$CHECKS"
}

# Prints "instance<TAB>metric<TAB>median" for every instance and metric in RESULTS.
medians() {
    sort -t$'\t' -k2,2 -k3,3 -k4,4g "$RESULTS" | awk -F'\t' '
        function flush(   mid) {
            if (n == 0) return
            mid = int((n + 1) / 2)
            median = (n % 2) ? v[mid] : (v[mid] + v[mid + 1]) / 2
            printf "%s\t%s\t%g\n", key_instance, key_metric, median
            n = 0
        }
        $2 != key_instance || $3 != key_metric { flush(); key_instance = $2; key_metric = $3 }
        { v[++n] = $4 }
        END { flush() }'
}

# The table rows: metric, label, scale divisor, target kind, target value, and whether the
# ratios mean anything (they do not for counts). The target kinds are ge_nginx (ratio to nginx
# at least the value), le_goref (at most goref's median), lt (below the value), eq (equal to
# the value) and - (none).
readonly REPORT_ROWS="\
startup_ms|startup to first response, ms|1|lt|50|y
idle_rss_kib|S5 RSS idle (max_conns 128), MiB|1024|le_goref||y
idle_rss_20_kib|S5 RSS idle (max_conns 20), MiB|1024|le_goref||y
s1_mbps|S1 one download of s1.mp4, MB/s|1|ge_nginx|1.0|y
s1_cpu_ms|S1 server CPU for the download, ms|1|-||y
s2_rps|S2 random 64 KiB ranges, req/s|1|ge_nginx|1.0|y
s2_p99_ms|S2 p99 latency, ms|1|le_goref||y
s2_peak_rss_kib|S5 peak RSS under S2, MiB|1024|-||y
s2_cpu_us_per_request|S2 server CPU per request, us|1|-||y
s2_failures|S2 failed requests|1|eq|0|n
s3_mbps|S3 parallel downloads (max_conns 128), MB/s|1|ge_nginx|1.0|y
s3_cpu_ms|S3 server CPU for all downloads, ms|1|-||y
s3_complete|S3 complete downloads (max_conns 128)|1|-||n
s3_limited_complete|S3 at max_conns 20: complete|1|eq|20|n
s3_limited_429|S3 at max_conns 20: answered 429|1|-||n
s3_limited_median_429_ms|S3 at max_conns 20: median time to 429, ms|1|-||y
s3_limited_slowest_429_ms|S3 at max_conns 20: slowest 429, ms|1|-||y
s4_mbps|S4 multipart upload, MB/s|1|ge_nginx|1.0|y
s4_peak_rss_kib|S4 peak RSS during the upload, MiB|1024|lt|32|y
s4_cpu_ms|S4 server CPU for the upload, ms|1|-||y"

# Prints the Markdown table of medians, ratios and targets.
print_table() {
    local medians_file="$WORK/medians.tsv"
    medians >"$medians_file"
    echo "$REPORT_ROWS" | awk -F'|' -v medians="$medians_file" '
        BEGIN {
            while ((getline line < medians) > 0) {
                split(line, f, "\t")
                value[f[1], f[2]] = f[3]
                seen[f[2]] = 1
            }
            print "| figure | streamserver | nginx | goref | ss/nginx | ss/goref | target |"
            print "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
        }
        function shown(instance, metric, scale,   v) {
            if (!((instance, metric) in value)) return "-"
            v = value[instance, metric] / scale
            return (v == int(v)) ? sprintf("%d", v) : sprintf("%.1f", v)
        }
        function ratio(metric, peer) {
            if (!(("streamserver", metric) in value) || !((peer, metric) in value)) return "-"
            if (value[peer, metric] == 0) return "-"
            return sprintf("%.2f", value["streamserver", metric] / value[peer, metric])
        }
        function verdict(metric, kind, target,   ours, r) {
            if (kind == "-") return ""
            if (!(("streamserver", metric) in value)) return "no figure"
            ours = value["streamserver", metric]
            if (kind == "ge_nginx") {
                r = ratio(metric, "nginx")
                if (r == "-") return "no nginx figure"
                return (r + 0 >= target) ? ">= " target "x nginx: met" : ">= " target "x nginx: missed"
            }
            if (kind == "le_goref") {
                if (!(("goref", metric) in value)) return "no goref figure"
                return (ours <= value["goref", metric]) ? "<= goref: met" : "<= goref: missed"
            }
            if (kind == "lt") return (ours / $3 < target) ? "< " target ": met" : "< " target ": missed"
            if (kind == "eq") return (ours == target) ? "= " target ": met" : "= " target ": missed"
            return ""
        }
        seen[$1] {
            printf "| %s | %s | %s | %s | %s | %s | %s |\n", $2,
                shown("streamserver", $1, $3), shown("nginx", $1, $3), shown("goref", $1, $3),
                ($6 == "y") ? ratio($1, "nginx") : "-", ($6 == "y") ? ratio($1, "goref") : "-",
                verdict($1, $4, $5)
        }'
}
