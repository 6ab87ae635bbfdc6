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
#
# Cluster mode (compose.cluster.yaml), when ROUTERS is set: no router.pem in
# the CA directory and no copy in ROUTER_CERTS_DIR itself; instead two CAs.
# The ICOM CA (ICOM_CERTS_DIR), which the routers trust for game servers,
# issues only the routers' QUIC certificates and the game servers' client
# certificates. A second CA, the NATS CA (NATS_CA_DIR), issues every NATS
# certificate, so that none of them is a game server to a router (a router
# takes any client certificate of its CA, named by its CN) and no game
# server's certificate gets through NATS's TLS.
#   ROUTERS           router names (letters, digits, '-'). Each NAME gets a
#                     QUIC certificate from the ICOM CA (NAME, ROUTER_DNS,
#                     localhost, ROUTER_IP) and a NATS client certificate from
#                     the NATS CA whose CN, icom-NAME, is its NATS user;
#                     ROUTER_CERTS_DIR/NAME/ receives ca.pem, crl.pem,
#                     router.pem, router.key (ICOM), nats-ca.pem, nats.pem,
#                     nats.key (NATS).
#   NATS_NODES        NATS node names (letters, digits, '-'). Each NAME gets a
#                     certificate from the NATS CA for NAME and localhost that
#                     serves clients and dials routes (icom-certs router
#                     --client-auth); NATS_CERTS_DIR/NAME/ receives ca.pem
#                     (the NATS CA), server.pem, server.key.
#   NATS_CA_DIR       the NATS CA's directory, made with icom-certs init
#                     (default ICOM_CERTS_DIR/nats-ca, so that it is kept with
#                     the ICOM CA; never given to a service)
#   NATS_CERTS_DIR    where the nodes' copies go (default /etc/icom/nats)
#   NATS_DATA_DIR     if set, NATS_DATA_DIR/NAME/ is created for each node: its
#                     JetStream store (ICOM's persistent events and offline
#                     queues), owned by this script's user like the rest
# The routers' and nodes' certificates are kept in their CA's directory under
# servers/ (NAME.pem, NAME.key), apart from the client certificates.
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

# Warns when CERT does not name each of the DNS names that follow.
check_names() {
    cert=$1
    shift
    sans=$(icom-certs inspect "$cert" --json) || die "cannot inspect $cert"
    for name in "$@"; do
        case $sans in
            *"\"DNS:$name\""*) ;;
            *) echo "warning: $cert does not name $name; to reissue it, remove it" \
                "and its key and run this again" >&2 ;;
        esac
    done
}

# Copies SRC to DST when DST is missing or differs (keys 0600, the rest
# 0644); sets changed=1 when it does.
sync_file() {
    src=$1
    dst=$2
    [ -f "$src" ] || die "$src is missing"
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        echo "same     $dst"
        return 0
    fi
    case $dst in
        *.key) mode=0600 ;;
        *) mode=0644 ;;
    esac
    cp "$src" "$dst.tmp"
    chmod "$mode" "$dst.tmp"
    mv -f "$dst.tmp" "$dst"
    echo "copied   $dst"
    changed=1
}

# Checks that each word of a list is a usable name.
check_list() {
    what=$1
    for name in $2; do
        case $name in
            '' | -* | *[!A-Za-z0-9-]*) die "$what: '$name' must be letters, digits and '-'" ;;
        esac
    done
}

# Issues DIR/servers/NAME.pem and DIR/servers/NAME.key from the CA in DIR
# (icom-certs router with the remaining arguments) unless they exist.
# icom-certs writes router.pem and router.key, so a router.pem already there
# is set aside and put back.
issue_server() {
    dir=$1
    name=$2
    shift 2
    cert=$dir/servers/$name.pem
    key=$dir/servers/$name.key
    if [ -f "$cert" ] && [ -f "$key" ]; then
        echo "kept     $cert (the certificate of $name exists)"
        return 0
    fi
    mkdir -p "$dir/servers"
    for f in router.pem router.key; do
        if [ -e "$dir/$f" ]; then mv -f "$dir/$f" "$dir/$f.aside"; fi
    done
    icom-certs router --dir "$dir" "$@"
    mv -f "$dir/router.key" "$key"
    mv -f "$dir/router.pem" "$cert"
    for f in router.pem router.key; do
        if [ -e "$dir/$f.aside" ]; then mv -f "$dir/$f.aside" "$dir/$f"; fi
    done
}

dns_names=$( (words "${ROUTER_DNS-icom-router}"; echo localhost) | awk '!seen[$0]++')
routers=$(words "${ROUTERS:-}")
nodes=$(words "${NATS_NODES:-}")
changed=0

if [ -z "$routers" ]; then
    # 2. The router's certificate: ROUTER_DNS, localhost and ROUTER_IP.
    if [ -f "$ca_dir/router.pem" ] && [ -f "$ca_dir/router.key" ]; then
        echo "kept     $ca_dir/router.pem (the router certificate exists)"
        # shellcheck disable=SC2086 # one name per word
        check_names "$ca_dir/router.pem" $dns_names
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
else
    # 2. Cluster mode: the NATS CA; each router's QUIC certificate (ICOM
    #    CA) and NATS client certificate (NATS CA), each NATS node's
    #    certificate (NATS CA).
    check_list ROUTERS "$routers"
    check_list NATS_NODES "$nodes"
    [ -n "$nodes" ] || die "ROUTERS is set but NATS_NODES is empty: the routers need NATS"
    nats_ca=${NATS_CA_DIR:-$ca_dir/nats-ca}
    mkdir -p "$nats_ca" || die "cannot create $nats_ca"
    [ "$(cd "$nats_ca" && pwd -P)" != "$(cd "$ca_dir" && pwd -P)" ] ||
        die "NATS_CA_DIR is ICOM_CERTS_DIR: NATS needs a CA of its own"
    if [ -f "$nats_ca/ca.pem" ]; then
        echo "kept     $nats_ca/ca.pem (the NATS CA exists)"
    else
        icom-certs init --dir "$nats_ca" --name "ICOM NATS CA"
    fi
    shared=$(words "${ROUTER_DNS:-}")
    for router in $routers; do
        names=$( (echo "$router"; printf '%s\n' "$shared"; echo localhost) | sed '/^$/d' | awk '!seen[$0]++')
        if [ -f "$ca_dir/servers/$router.pem" ]; then
            # shellcheck disable=SC2086 # one name per word
            check_names "$ca_dir/servers/$router.pem" $names
        fi
        set --
        for name in $names; do
            set -- "$@" --dns "$name"
        done
        for ip in $(words "${ROUTER_IP:-}"); do
            set -- "$@" --ip "$ip"
        done
        issue_server "$ca_dir" "$router" "$@"
        user=icom-$router
        if [ -f "$nats_ca/$user.pem" ]; then
            echo "kept     $nats_ca/$user.pem (the NATS client certificate of $router exists)"
        else
            icom-certs client --dir "$nats_ca" "$user"
        fi
    done
    for node in $nodes; do
        issue_server "$nats_ca" "$node" --client-auth --dns "$node" --dns localhost
    done
fi

# 3. One client certificate per server id in CLIENTS.
for id in $(words "${CLIENTS:-}"); do
    if [ -f "$ca_dir/$id.pem" ]; then
        echo "kept     $ca_dir/$id.pem (the client certificate exists)"
    else
        icom-certs client "$id"
    fi
done

# 4. Each service's copy, replaced only where it differs.
if [ -z "$routers" ]; then
    for file in ca.pem crl.pem router.pem router.key; do
        sync_file "$ca_dir/$file" "$out_dir/$file"
    done
    services=router
else
    nats_dir=${NATS_CERTS_DIR:-/etc/icom/nats}
    for router in $routers; do
        dir=$out_dir/$router
        mkdir -p "$dir" || die "cannot create $dir"
        sync_file "$ca_dir/ca.pem" "$dir/ca.pem"
        sync_file "$ca_dir/crl.pem" "$dir/crl.pem"
        sync_file "$ca_dir/servers/$router.pem" "$dir/router.pem"
        sync_file "$ca_dir/servers/$router.key" "$dir/router.key"
        sync_file "$nats_ca/ca.pem" "$dir/nats-ca.pem"
        sync_file "$nats_ca/icom-$router.pem" "$dir/nats.pem"
        sync_file "$nats_ca/icom-$router.key" "$dir/nats.key"
    done
    for node in $nodes; do
        dir=$nats_dir/$node
        mkdir -p "$dir" || die "cannot create $dir"
        sync_file "$nats_ca/ca.pem" "$dir/ca.pem"
        sync_file "$nats_ca/servers/$node.pem" "$dir/server.pem"
        sync_file "$nats_ca/servers/$node.key" "$dir/server.key"
        if [ -n "${NATS_DATA_DIR:-}" ]; then
            mkdir -p "$NATS_DATA_DIR/$node" || die "cannot create $NATS_DATA_DIR/$node"
        fi
    done
    services=$(printf '%s\n' "$routers" "$nodes" | tr '\n' ' ')
    services=${services% }
fi

if [ "$changed" = 1 ]; then
    echo "the files changed: running services pick them up on SIGHUP" \
        "(docker compose kill -s SIGHUP $services)"
fi
echo "client certificates are in $ca_dir: give each game server its SERVER_ID.pem," \
    "SERVER_ID.key and ca.pem"
