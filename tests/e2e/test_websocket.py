"""WebSocket end to end: a real ``websockets`` server over TLS (secrets from the server's ssl context),
a real client; text, binary, fragmented and compressed messages, echoed, then a close. Captured by
tcpdump and replayed: the handshake is the call, and every message comes in order with the right bytes,
direction and opcode, and the close code and reason."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect  # noqa: E402
from websockets.sync.server import serve  # noqa: E402

from tests.support.otlp_receiver import make_cert  # noqa: E402
from tests.support.sniff import Sniffer, tcpdump_usable  # noqa: E402
from tlsmirror.shell.commands import main as cli_main  # noqa: E402

pytestmark = pytest.mark.slow

BIG = ("compress me " * 2000)
SENT: list[str | bytes] = ["hello", b"\x00\x01\x02\xff", BIG, "fragmented message"]


def _echo(ws: Any) -> None:
    try:
        for msg in ws:
            ws.send(msg)
    except websockets.ConnectionClosed:
        pass  # the client's close code 4000 is not "normal": the iteration says so


def _session(tmp: Path, compression: str | None, *extra: str) -> list[dict[str, Any]]:
    why = tcpdump_usable()
    if why:
        pytest.skip(why)
    cert_pem, key_pem = make_cert()
    d = Path(tempfile.mkdtemp(dir=tmp))
    (d / "c.pem").write_bytes(cert_pem)
    (d / "k.pem").write_bytes(key_pem)
    keylog = tmp / f"keys-{compression}.log"
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(d / "c.pem", d / "k.pem")
    sctx.keylog_filename = str(keylog)
    cctx = ssl.create_default_context(cadata=cert_pem.decode())
    pcap = tmp / f"ws-{compression}.pcap"
    with serve(_echo, "127.0.0.1", 0, ssl=sctx, compression=compression) as server:
        port = server.socket.getsockname()[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with Sniffer(str(pcap), port), \
                connect(f"wss://localhost:{port}/chat", ssl=cctx, compression=compression) as ws:
            for m in SENT[:3]:
                ws.send(m)
                assert ws.recv() == m
            ws.send(iter(["fragmented ", "message"]))
            assert ws.recv() == "fragmented message"
            ws.close(code=4000, reason="done here")
        server.shutdown()
    out = tmp / f"calls-{compression}.jsonl"
    assert cli_main(["replay", str(pcap), "--keylog", str(keylog), "-o", str(out), "--body-limit", "1m"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    if extra:  # the same capture again with these replay options: both outputs
        out2 = tmp / f"calls-{compression}-2.jsonl"
        assert cli_main(["replay", str(pcap), "--keylog", str(keylog), "-o", str(out2), "--body-limit", "1m",
                         *extra]) == 0
        records += [{"second": [json.loads(line) for line in out2.read_text().splitlines()]}]
    return records


def _content(m: dict[str, Any]) -> str | bytes:
    return m["text"] if "text" in m else base64.b64decode(m["base64"])


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websocket_session_messages_in_order(tmp_path: Path, compression: str | None) -> None:
    records = _session(tmp_path, compression)
    assert len(records) == 1
    r = records[0]
    assert (r["method"], r["path"], r["status"]) == ("GET", "/chat", 101)
    ws = r["websocket"]
    assert ws["flags"] == []
    data = [m for m in ws["list"] if m["opcode"] in ("text", "binary")]
    want = [(side, m) for m in SENT for side in ("client", "server")]
    assert [(m["direction"], _content(m)) for m in data] == want
    assert [m["opcode"] for m in data] == [o for m in SENT for o in [("text" if isinstance(m, str) else "binary")] * 2]
    frag = data[6]
    assert frag["frames"] >= 2 and frag["size"] == len("fragmented message")  # websockets ends with an empty frame
    big = data[4]
    if compression:
        assert "permessage-deflate" in ws["extensions"]
        assert big["compressed"] and big["wire_size"] < len(BIG) // 10
    else:
        assert not big["compressed"] and big["wire_size"] == len(BIG)
    assert (ws["close_code"], ws["close_reason"], ws["closed_by"]) == (4000, "done here", "client")
    assert ws["messages"] == {"client": 5, "server": 5}  # 4 data messages + the close, each side
    times = [m["ts"] for m in ws["list"]]
    assert times == sorted(times)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_replay_one_record_per_message(tmp_path: Path, workers: list[str]) -> None:
    """``replay --websocket-records message``: the session's record without its list, then one record per
    message in the session's order (with and without --workers)."""
    *records, second = _session(tmp_path, None, "--websocket-records", "message", *workers)
    session = records[0]["websocket"]
    head, msgs = second["second"][0], second["second"][1:]
    assert head["status"] == 101 and head["websocket"]["list"] == []
    assert head["websocket"]["messages"] == session["messages"]
    assert [m["kind"] for m in msgs] == ["websocket_message"] * len(session["list"])
    assert [m["index"] for m in msgs] == list(range(len(session["list"])))
    assert [(m["direction"], m["opcode"], m["size"]) for m in msgs] == \
        [(m["direction"], m["opcode"], m["size"]) for m in session["list"]]
