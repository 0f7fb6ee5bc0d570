"""WebSocket over HTTP/2 (RFC 8441) end to end: a real Hypercorn server (it accepts extended CONNECT on
HTTP/2 and runs the ASGI WebSocket app on the stream) over TLS; the client is built from the ``h2``
library (HTTP/2 framing, extended CONNECT with ``:protocol websocket``) and ``wsproto`` (WebSocket frames,
masking, permessage-deflate) on a real TLS socket whose secrets are logged: no ready-made client speaks
RFC 8441 here (``websockets`` does not). Captured by tcpdump and replayed: the CONNECT stream is the call,
and its messages come in order with the right bytes, direction and opcode, with the close code."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

h2_connection = pytest.importorskip("h2.connection")
pytest.importorskip("hypercorn")
pytest.importorskip("wsproto")

import h2.config  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402
from hypercorn.asyncio import serve  # noqa: E402
from hypercorn.config import Config as HypercornConfig  # noqa: E402
from wsproto.connection import Connection as WsConnection  # noqa: E402
from wsproto.connection import ConnectionType  # noqa: E402
from wsproto.events import BytesMessage, CloseConnection, Message, TextMessage  # noqa: E402
from wsproto.extensions import PerMessageDeflate  # noqa: E402

from tests.support.daemon import free_port  # noqa: E402
from tests.support.otlp_receiver import make_cert  # noqa: E402
from tests.support.sniff import Sniffer, tcpdump_usable  # noqa: E402
from tlsmirror.shell.commands import main as cli_main  # noqa: E402

pytestmark = pytest.mark.slow

BIG = "compress me " * 2000
SENT: list[str | bytes] = ["hello", b"\x00\x01\x02\xff", BIG]


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            ev = await receive()
            await send({"type": ev["type"] + ".complete"})
            if ev["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        ev = await receive()
        if ev["type"] == "websocket.disconnect":
            return
        if ev.get("text") is not None:
            await send({"type": "websocket.send", "text": ev["text"]})
        else:
            await send({"type": "websocket.send", "bytes": ev["bytes"]})


class Server:
    def __init__(self, cert: Path, key: Path) -> None:
        self.port = free_port()
        cfg = HypercornConfig()
        cfg.bind = [f"127.0.0.1:{self.port}"]
        cfg.certfile, cfg.keyfile = str(cert), str(key)
        cfg.alpn_protocols = ["h2"]
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.up = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.up.wait(20), "hypercorn did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_ev = asyncio.Event()
            self.loop.call_later(0.5, self.up.set)
            await serve(echo_app, self.cfg, shutdown_trigger=self.stop_ev.wait)  # type: ignore[arg-type]

        self.loop.run_until_complete(main())

    def stop(self) -> None:
        assert self.stop_ev is not None
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(20)


class H2WebSocketClient:
    """RFC 8441 by hand: h2 for the connection and the extended CONNECT, wsproto for the frames."""

    def __init__(self, port: int, cafile: bytes, keylog: Path, compression: bool) -> None:
        ctx = ssl.create_default_context(cadata=cafile.decode())
        ctx.set_alpn_protocols(["h2"])
        ctx.keylog_filename = str(keylog)
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                    server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.h2 = h2_connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self._flush()
        self.events: list[Any] = []
        self.inbox: list[Message] = []
        self._until(lambda: self.h2.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1)
        self.sid = self.h2.get_next_available_stream_id()
        headers = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                   (":path", "/chat?room=1"), (":authority", f"localhost:{port}"), ("sec-websocket-version", "13")]
        ext = PerMessageDeflate()
        if compression:
            headers.append(("sec-websocket-extensions", f"{ext.name}; {ext.offer()}"))
        self.h2.send_headers(self.sid, headers)
        self._flush()
        resp = self._until(lambda: next((e for e in self.events if isinstance(e, h2.events.ResponseReceived)), None))
        got = dict(resp.headers)
        assert got[":status"] == "200", got
        exts = []
        if compression:
            accepted = got.get("sec-websocket-extensions")
            assert accepted and "permessage-deflate" in accepted
            ext.finalize(accepted)
            exts = [ext]
        self.ws = WsConnection(ConnectionType.CLIENT, extensions=exts)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _until(self, cond: Any) -> Any:
        for _ in range(2000):
            v = cond()
            if v:
                return v
            data = self.sock.recv(65536)
            assert data, f"server closed the connection after {self.events[-5:]}"
            for ev in self.h2.receive_data(data):
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id == getattr(self, "sid", None):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    self.ws.receive_data(ev.data)
                    self.inbox.extend(e for e in self.ws.events() if isinstance(e, (Message, CloseConnection)))
            self._flush()
        raise AssertionError("no answer")

    def send(self, event: Any) -> None:
        data = self.ws.send(event)
        step = self.h2.max_outbound_frame_size
        for i in range(0, len(data), step):  # a WebSocket frame may span DATA frames
            self.h2.send_data(self.sid, data[i:i + step])
        self._flush()

    def recv(self) -> Any:
        parts: list[Any] = []
        while True:
            self._until(lambda: self.inbox)
            ev = self.inbox.pop(0)
            if isinstance(ev, CloseConnection):
                return ev
            parts.append(ev.data)
            if ev.message_finished:
                return "".join(parts) if isinstance(ev, TextMessage) else b"".join(parts)

    def close(self, code: int, reason: str) -> CloseConnection:
        self.send(CloseConnection(code=code, reason=reason))
        ev = self.recv()
        assert isinstance(ev, CloseConnection)
        # Hypercorn ends the stream (or the connection) after its Close; the client ends its side too
        self.h2.end_stream(self.sid)
        self.h2.close_connection()
        with contextlib.suppress(OSError):
            self._flush()
            self.sock.recv(65536)  # the server's last frames, or its close
        self.sock.close()
        return ev


def _session(tmp: Path, compression: bool) -> list[dict[str, Any]]:
    why = tcpdump_usable()
    if why:
        pytest.skip(why)
    cert_pem, key_pem = make_cert()
    d = Path(tempfile.mkdtemp(dir=tmp))
    (d / "c.pem").write_bytes(cert_pem)
    (d / "k.pem").write_bytes(key_pem)
    keylog = tmp / f"keys-{compression}.log"
    pcap = tmp / f"ws-h2-{compression}.pcap"
    server = Server(d / "c.pem", d / "k.pem")
    try:
        with Sniffer(str(pcap), server.port):
            c = H2WebSocketClient(server.port, cert_pem, keylog, compression)
            for m in SENT:
                c.send(TextMessage(m) if isinstance(m, str) else BytesMessage(m))
                assert c.recv() == m
            c.send(TextMessage("fragmented ", message_finished=False))
            c.send(TextMessage("message", message_finished=True))
            assert c.recv() == "fragmented message"
            c.close(4000, "done here")
    finally:
        server.stop()
    out = tmp / f"calls-{compression}.jsonl"
    assert cli_main(["replay", str(pcap), "--keylog", str(keylog), "-o", str(out), "--body-limit", "1m"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def _content(m: dict[str, Any]) -> str | bytes:
    return m["text"] if "text" in m else base64.b64decode(m["base64"])


@pytest.mark.parametrize("compression", [True, False])
def test_websocket_over_http2_extended_connect(tmp_path: Path, compression: bool) -> None:
    records = _session(tmp_path, compression)
    assert len(records) == 1
    r = records[0]
    assert (r["http_version"], r["method"], r["path"], r["status"]) == ("2", "CONNECT", "/chat", 200)
    assert r["route"] == "/chat" and r["tls"]["alpn"] == "h2"
    assert r["request"]["body"] is None and r["response"]["body"] is None  # the DATA frames were the session
    ws = r["websocket"]
    assert ws["flags"] == []
    data = [m for m in ws["list"] if m["opcode"] in ("text", "binary")]
    sent = [*SENT, "fragmented message"]
    assert [(m["direction"], _content(m)) for m in data] == [(side, m) for m in sent for side in ("client", "server")]
    assert data[6]["frames"] == 2 and data[6]["direction"] == "client"
    big = data[4]
    if compression:
        assert "permessage-deflate" in ws["extensions"]
        assert big["compressed"] and big["wire_size"] < len(BIG) // 10
    else:
        assert ws["extensions"] is None and not big["compressed"] and big["wire_size"] == len(BIG)
    assert (ws["close_code"], ws["close_reason"], ws["closed_by"]) == (4000, "done here", "client")
    assert ws["messages"] == {"client": 5, "server": 5}
    times = [m["ts"] for m in ws["list"]]
    assert times == sorted(times) and ws["end_ts"] >= times[-1]
