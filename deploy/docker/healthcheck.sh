#!/bin/bash
# icom-healthcheck [CONFIG]: the image's HEALTHCHECK. Exits 0 and prints one
# line when the router is healthy; exits 1 and says why otherwise.
#
# Healthy means:
#  1. the configuration and every file it names (CA, router certificate and
#     key, CRL) still load: `icom-server --check-config CONFIG`, so a router
#     that could not restart or reload is reported before it has to;
#  2. a socket is bound to the router's UDP port in this network namespace
#     (/proc/net/udp and udp6);
#  3. when the router serves metrics ([metrics] enabled = true, as the
#     image's config has it, on 127.0.0.1:9091), GET /readyz answers 200:
#     the router is up and not shutting down.
#
# The script reads the port and the metrics address as the router does:
# ICOM_LISTEN, ICOM_METRICS__ENABLED and ICOM_METRICS__LISTEN, else CONFIG,
# else the defaults. Flags it cannot see: if the router runs with --listen,
# set HEALTHCHECK_PORT. HEALTHCHECK_URL=http://HOST:PORT/PATH replaces the
# derived URL; HEALTHCHECK_URL=none skips step 3. (Not ICOM_*: the router
# reads every ICOM_* variable as configuration.)
#
# It needs bash (for /dev/tcp), awk, sed and icom-server on PATH: all in the
# image, so the healthcheck never depends on a tool the image lacks.
set -euo pipefail

config=${1:-/etc/icom/icom-server.toml}

unhealthy() {
    echo "unhealthy: $*" >&2
    exit 1
}

# The value of KEY in [SECTION] ("" for the top level) of CONFIG, unquoted.
toml_get() {
    awk -v want="$1" -v key="$2" '
        { line = $0; sub(/^[ \t]+/, "", line) }
        line ~ /^\[/ { sec = line; sub(/^\[[ \t]*/, "", sec); sub(/[ \t]*\].*$/, "", sec); next }
        sec == want && line ~ ("^" key "[ \t]*=") {
            sub(/^[^=]*=[ \t]*/, "", line); sub(/[ \t]*(#.*)?$/, "", line)
            gsub(/"/, "", line); print line; exit
        }' "$config"
}

# 1. The configuration and its files.
if ! out=$(icom-server --check-config "$config" 2>&1); then
    unhealthy "${out:-icom-server --check-config $config failed}"
fi

# 2. The UDP port.
port=${HEALTHCHECK_PORT:-}
if [ -z "$port" ]; then
    listen=${ICOM_LISTEN:-$(toml_get "" listen)}
    listen=${listen:-0.0.0.0:9090}
    port=${listen##*:}
fi
case $port in
    '' | *[!0-9]*) unhealthy "cannot tell the router's UDP port (got '$port'): set HEALTHCHECK_PORT" ;;
esac
tables=()
for t in /proc/net/udp /proc/net/udp6; do
    if [ -r "$t" ]; then tables+=("$t"); fi
done
[ "${#tables[@]}" -gt 0 ] || unhealthy "cannot read /proc/net/udp"
hex=$(printf '%04X' "$port")
if ! awk -v p="$hex" 'FNR > 1 { n = split($2, a, ":"); if (a[n] == p) found = 1 } END { exit !found }' "${tables[@]}"; then
    unhealthy "nothing listens on UDP port $port"
fi

# 3. /readyz, when the router serves it.
url=${HEALTHCHECK_URL:-}
if [ -z "$url" ]; then
    enabled=${ICOM_METRICS__ENABLED:-$(toml_get metrics enabled)}
    if [ "${enabled:-false}" = true ]; then
        addr=${ICOM_METRICS__LISTEN:-$(toml_get metrics listen)}
        addr=${addr:-127.0.0.1:9091}
        host=${addr%:*}
        host=${host#\[}
        host=${host%\]}
        case $host in
            0.0.0.0 | '' | ::) host=127.0.0.1 ;;
        esac
        url="http://$host:${addr##*:}/readyz"
    fi
fi
if [ "$url" = none ]; then
    url=
fi
if [ -n "$url" ]; then
    rest=${url#http://}
    [ "$rest" != "$url" ] || unhealthy "HEALTHCHECK_URL must be http://HOST:PORT/PATH, not $url"
    hostport=${rest%%/*}
    path=${rest#"$hostport"}
    path=${path:-/}
    host=${hostport%:*}
    hport=${hostport##*:}
    [ "$host" != "$hostport" ] || hport=80
    exec 3<>"/dev/tcp/$host/$hport" || unhealthy "cannot connect to $hostport for $url"
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
    status=
    IFS= read -r -t 3 status <&3 || true
    exec 3<&-
    status=${status%$'\r'}
    case $status in
        "HTTP/1."[01]" 200"*) ;;
        '') unhealthy "no answer from $url" ;;
        *) unhealthy "$url answered: $status" ;;
    esac
fi

echo "healthy: $config ok, UDP port $port bound${url:+, $url 200}"
