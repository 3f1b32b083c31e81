#!/usr/bin/env bash
# A one-monitor, one-OSD Ceph cluster with RGW on 127.0.0.1: the tests' realism tier (a
# production S3 implementation with atomic conditional writes).
#
#   scripts/ceph.sh start DIR    boot it with its data under DIR; writes DIR/env
#                                (WALFLEET_CEPH_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _BUCKET)
#   scripts/ceph.sh stop DIR     stop it (RGW, OSD, monitor)
#
# Needs the Debian packages radosgw, ceph-mon and ceph-osd (scripts/install-deps.sh).
set -euo pipefail
cmd=${1:?start or stop}
D=${2:?data directory}
C=(-c "$D/ceph.conf")
say() { echo "ceph: $*" >&2; }

stop() {
    for n in client.rgw.a osd.0 mon.a; do
        [ -f "$D/run/$n.pid" ] || continue
        p=$(cat "$D/run/$n.pid")
        kill "$p" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Runs "$@" until it succeeds, at most $1 seconds.
until_ok() {
    local limit=$1 start=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - start > limit)); then
            say "gave up after ${limit}s waiting for: $*"
            tail -n 30 "$D"/log/*.log >&2 || true
            return 1
        fi
        sleep 0.3
    done
}

case $cmd in
stop) stop ;;
start)
    stop 2>/dev/null || true
    rm -rf "$D"
    mkdir -p "$D"/{mon/a,osd/0,run,log,rgw}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mon_port=$(free_port)
    rgw_port=$(free_port)
    cat >"$D/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = $D/run
log file = $D/log/\$name.log
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
osd objectstore = bluestore
[mon.a]
mon data = $D/mon/a
[osd]
osd data = $D/osd/\$id
bluestore block create = true
bluestore block size = 8589934592
osd memory target = 939524096
osd crush update on start = false
osd class update on start = false
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $D/rgw
CONF
    monmaptool --create --addv a "[v1:127.0.0.1:$mon_port]" --fsid "$fsid" "$D/monmap" >/dev/null
    ceph-mon "${C[@]}" --mkfs -i a --monmap "$D/monmap"
    ceph-mon "${C[@]}" -i a
    until_ok 60 timeout 10 ceph "${C[@]}" -s
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph "${C[@]}" osd new "$osd_uuid")
    ceph-osd "${C[@]}" -i "$id" --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
    ceph "${C[@]}" osd crush add-bucket localhost host >/dev/null 2>&1
    ceph "${C[@]}" osd crush move localhost root=default >/dev/null 2>&1
    ceph "${C[@]}" osd crush add "osd.$id" 1.0 host=localhost >/dev/null 2>&1
    ceph-osd "${C[@]}" -i "$id"
    radosgw "${C[@]}" -n client.rgw.a
    ak=walfleetceph$(date +%s)
    sk=$(cat /proc/sys/kernel/random/uuid)
    until_ok 90 radosgw-admin "${C[@]}" user create --uid=walfleet --display-name=walfleet \
        --access-key="$ak" --secret-key="$sk"
    endpoint=http://127.0.0.1:$rgw_port
    until_ok 90 python3 "$(dirname "$0")/s3_mkbucket.py" "$endpoint" test "$ak" "$sk"
    cat >"$D/env" <<ENV
WALFLEET_CEPH_ENDPOINT=$endpoint
WALFLEET_CEPH_ACCESS_KEY=$ak
WALFLEET_CEPH_SECRET_KEY=$sk
WALFLEET_CEPH_BUCKET=test
ENV
    say "RGW ready at $endpoint (data $D)"
    ;;
*)
    say "unknown command $cmd (start or stop)"
    exit 2
    ;;
esac
