#!/usr/bin/env python3
"""Build the benchmark capture: real nginx, real OpenSSL clients, tcpdump on the lab's mirror interface.

    sudo python3 bench/make_capture.py [--conns 600] [--reqs 50] [--body 300] [--parallel 4] [--force]

Default: 30,000 HTTPS requests over 600 keep-alive connections, a rotation of TLS 1.3 and TLS 1.2
(AES-128/256-GCM, ChaCha20-Poly1305, AES-128-CBC-SHA256, AES-256-CBC-SHA) at MTU 1500, written to
bench/data/https-600x50.pcap with its NSS key log https-600x50.keylog. When both files exist the build is
skipped (use --force to rebuild). Needs root (network namespaces, tcpdump); only lab addresses are used.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BODY, CONNS, DATA, PARALLEL, REPO, REQS, capture_paths, capture_stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=CONNS)
    ap.add_argument("--reqs", type=int, default=REQS, help="requests per connection")
    ap.add_argument("--body", type=int, default=BODY, help="request bodies of 0..BODY bytes")
    ap.add_argument("--parallel", type=int, default=PARALLEL, help="concurrent client processes")
    ap.add_argument("--force", action="store_true", help="rebuild even if the capture exists")
    a = ap.parse_args()
    cap, keylog = capture_paths(a.conns, a.reqs)
    if cap.exists() and keylog.exists() and not a.force:
        print(f"using cached {cap} (--force to rebuild)")
    else:
        if os.geteuid() != 0:
            print("building the capture needs root (network namespace lab, tcpdump)", file=sys.stderr)
            return 1
        DATA.mkdir(parents=True, exist_ok=True)
        tmp_cap, tmp_key = cap.with_suffix(".pcap.part"), keylog.with_suffix(".keylog.part")
        cmd = ["bash", str(REPO / "scripts" / "lab_capture.sh"), str(tmp_cap), str(tmp_key),
               str(a.conns), str(a.reqs), str(a.body), str(a.parallel)]
        print("building:", " ".join(cmd), flush=True)
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as exc:
            tmp_cap.unlink(missing_ok=True)
            tmp_key.unlink(missing_ok=True)
            print(f"capture failed (exit {exc.returncode})", file=sys.stderr)
            return 1
        os.replace(tmp_key, keylog)
        os.replace(tmp_cap, cap)  # the pcap last: its presence with the key log marks a finished build
    st = capture_stats(cap)
    keys = sum(1 for line in keylog.read_bytes().splitlines() if line.startswith(b"CLIENT_RANDOM")
               or line.startswith(b"CLIENT_TRAFFIC_SECRET_0"))
    print(f"{cap}: {st.packets} packets, {st.bytes} bytes of frames ({st.file_bytes / 1e6:.1f} MB file), "
          f"{st.connections} TCP connections, {st.duration:.1f} s of traffic")
    print(f"{keylog}: secrets for {keys} TLS sessions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
