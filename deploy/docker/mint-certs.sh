#!/bin/sh
# icom-mint-certs: what the compose `certs` service runs before the router
# starts. It makes the cluster's certificates with icom-certs and gives the
# router a copy of the four files it reads. It is idempotent: it creates only
# what is missing and copies only what changed, so running it again (every
# `docker compose up`) changes nothing; run it after `icom-certs revoke` to
# copy the new CRL, or with more CLIENTS to issue their certificates.
#
# Environment (lists are separated by spaces or commas):
#   ICOM_CERTS_DIR    the CA directory: CA key, index, every certificate
#                     issued (default /etc/icom/ca; never given to the router)
#   ROUTER_CERTS_DIR  the router's copy: ca.pem, crl.pem, router.pem,
#                     router.key (default /etc/icom/certs)
#   ROUTER_DNS        DNS names the game servers dial; the router certificate
#                     gets them and localhost (default icom-router)
#   ROUTER_IP         IP addresses the game servers dial (default none)
#   CLIENTS           server ids to issue client certificates for (default none)
set -eu

ca_dir=${ICOM_CERTS_DIR:-/etc/icom/ca}
out_dir=${ROUTER_CERTS_DIR:-/etc/icom/certs}
export ICOM_CERTS_DIR="$ca_dir"
umask 077

# The words of a space- or comma-separated list, one per line.
words() {
    printf '%s\n' "$1" | tr -s ', \t' '\n' | sed '/^$/d'
}

die() {
    echo "icom-mint-certs: $*" >&2
    exit 1
}

command -v icom-certs >/dev/null 2>&1 || die "icom-certs is not on PATH"
mkdir -p "$ca_dir" "$out_dir" || die "cannot create $ca_dir or $out_dir"

# 1. The CA.
if [ -f "$ca_dir/ca.pem" ]; then
    echo "kept     $ca_dir/ca.pem (the CA exists)"
else
    icom-certs init
fi

# 2. The router's certificate: ROUTER_DNS, localhost and ROUTER_IP.
dns_names=$( (words "${ROUTER_DNS-icom-router}"; echo localhost) | awk '!seen[$0]++')
if [ -f "$ca_dir/router.pem" ] && [ -f "$ca_dir/router.key" ]; then
    echo "kept     $ca_dir/router.pem (the router certificate exists)"
    sans=$(icom-certs inspect "$ca_dir/router.pem" --json) || die "cannot inspect $ca_dir/router.pem"
    for name in $dns_names; do
        case $sans in
            *"\"DNS:$name\""*) ;;
            *) echo "warning: $ca_dir/router.pem does not name $name; reissue it with" \
                "icom-certs router --force --dns ... and run this again" >&2 ;;
        esac
    done
else
    set --
    for name in $dns_names; do
        set -- "$@" --dns "$name"
    done
    for ip in $(words "${ROUTER_IP:-}"); do
        set -- "$@" --ip "$ip"
    done
    icom-certs router "$@"
fi

# 3. One client certificate per server id in CLIENTS.
for id in $(words "${CLIENTS:-}"); do
    if [ -f "$ca_dir/$id.pem" ]; then
        echo "kept     $ca_dir/$id.pem (the client certificate exists)"
    else
        icom-certs client "$id"
    fi
done

# 4. The router's copy, replaced only where it differs.
changed=0
for file in ca.pem crl.pem router.pem router.key; do
    src=$ca_dir/$file
    dst=$out_dir/$file
    [ -f "$src" ] || die "$src is missing"
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        echo "same     $dst"
        continue
    fi
    case $file in
        *.key) mode=0600 ;;
        *) mode=0644 ;;
    esac
    cp "$src" "$dst.tmp"
    chmod "$mode" "$dst.tmp"
    mv -f "$dst.tmp" "$dst"
    echo "copied   $dst"
    changed=1
done

if [ "$changed" = 1 ]; then
    echo "the router's files changed: a running router picks them up on SIGHUP" \
        "(docker compose kill -s SIGHUP router)"
fi
echo "client certificates are in $ca_dir: give each game server its SERVER_ID.pem," \
    "SERVER_ID.key and ca.pem"
