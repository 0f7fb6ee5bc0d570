#!/usr/bin/env bash
# Record a real mirrored HTTPS capture in the network-namespace lab (../shared/lab):
# nginx (TLS 1.2/1.3) in a namespace, real CPython/OpenSSL clients, tcpdump on the host end of the veth.
#   scripts/lab_capture.sh OUT.pcap OUT.keylog CONNS REQS [BODY] [PARALLEL]
# CONNS connections in all, REQS keep-alive requests on each, request bodies of 0..BODY bytes, spread over
# PARALLEL concurrent client processes (default 1) so that connections overlap as on a real mirror port.
# Needs root, nginx-light, iproute2, ethtool, tcpdump. Only the lab's own addresses are used.
# Refuses to start while the lab is up (another run); TLSMIRROR_LAB_RESET=1 tears a stale lab down first.
set -euo pipefail
out=$1; keylog=$2; conns=$3; reqs=$4; body=${5:-300}; par=${6:-1}
here=$(cd "$(dirname "$0")" && pwd)
lab=${TLSMIRROR_LAB:-$here/../../shared/lab}
[ -d "$lab" ] || { echo "lab not found at $lab (set TLSMIRROR_LAB)" >&2; exit 1; }
if [ "$par" -lt 1 ] || [ "$conns" -lt "$par" ]; then echo "PARALLEL must be 1..CONNS" >&2; exit 2; fi
work=$(mktemp -d)
dump=
cleanup() {
  if [ -n "$dump" ]; then kill "$dump" 2>/dev/null || true; fi
  bash "$lab/lab.sh" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
if ip link show tmlab0 >/dev/null 2>&1; then
  # another capture (or a crashed one) owns the lab: do not pull it from under a running job
  [ "${TLSMIRROR_LAB_RESET:-0}" = 1 ] || {
    echo "the lab is already up (tmlab0 exists): wait for the other run, or set TLSMIRROR_LAB_RESET=1" >&2
    trap - EXIT; rm -rf "$work"; exit 1; }
  bash "$lab/lab.sh" down >/dev/null 2>&1 || true
fi
bash "$lab/lab.sh" up >/dev/null
rm -f "$keylog"
# only the lab server's TLS port on the lab's own interface
tcpdump -i tmlab0 -Z root -n -s 0 -B 65536 -U -w "$out" 'host 198.18.0.2 and tcp port 443' 2>"$work/tcpdump.err" &
dump=$!
sleep 1
pids=()
for ((p = 0; p < par; p++)); do
  n=$(( conns / par + (p < conns % par ? 1 : 0) ))
  python3 "$lab/gen_https_traffic.py" 198.18.0.2 443 "$work/keylog.$p" --conns "$n" --reqs "$reqs" \
    --body "$body" --seed "$((p + 1))" >"$work/gen.$p" &
  pids+=("$!")
done
fail=0
for pid in "${pids[@]}"; do wait "$pid" || fail=1; done
sleep 1
kill -INT "$dump"; wait "$dump" 2>/dev/null || true
dump=
[ "$fail" = 0 ] || { echo "a traffic generator failed" >&2; exit 1; }
cat "$work"/keylog.* > "$keylog"
requests=$(cat "$work"/gen.* | awk '{s += $1} END {print s}')
drops=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$work/tcpdump.err")
echo "wrote $out and $keylog: $requests requests, ${drops:-?} packets dropped by kernel"
[ "${drops:-0}" = 0 ] || { echo "tcpdump dropped packets: capture incomplete" >&2; exit 1; }
