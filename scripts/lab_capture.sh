#!/usr/bin/env bash
# Record a real mirrored HTTPS capture in the network-namespace lab (../shared/lab):
# nginx (TLS 1.2/1.3) in a namespace, real CPython/OpenSSL clients, tcpdump on the host end of the veth.
#   scripts/lab_capture.sh OUT.pcap OUT.keylog CONNS REQS [BODY]
# Needs root, nginx-light, iproute2, ethtool, tcpdump. Only the lab's own addresses are used.
set -euo pipefail
out=$1; keylog=$2; conns=$3; reqs=$4; body=${5:-300}
here=$(cd "$(dirname "$0")" && pwd)
lab=${TLSMIRROR_LAB:-$here/../../shared/lab}
[ -d "$lab" ] || { echo "lab not found at $lab (set TLSMIRROR_LAB)" >&2; exit 1; }
bash "$lab/lab.sh" down >/dev/null 2>&1 || true
bash "$lab/lab.sh" up >/dev/null
trap 'bash "$lab/lab.sh" down >/dev/null 2>&1 || true' EXIT
rm -f "$keylog"
tcpdump -i tmlab0 -s 0 -U -w "$out" 'tcp port 443' 2>/dev/null &
dump=$!
sleep 1
python3 "$lab/gen_https_traffic.py" 198.18.0.2 443 "$keylog" --conns "$conns" --reqs "$reqs" --body "$body"
sleep 1
kill "$dump"; wait "$dump" 2>/dev/null || true
echo "wrote $out and $keylog"
