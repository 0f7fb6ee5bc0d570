"""Record dicts shaped as ``tlsmirror.record.call_to_dict`` writes them, for core inventory tests."""

from __future__ import annotations

import json
from typing import Any


def record(method: str, target: str, status: int | None = 200, *, host: str = "api.example", ts: float = 1.7e9,
           duration_ms: float = 10.0, req_headers: list[list[str]] | None = None, req_json: Any = None,
           resp_json: Any = None, resp_ct: str | None = "application/json") -> dict[str, Any]:
    path, _, qs = target.partition("?")
    query = [p.split("=", 1) if "=" in p else [p, ""] for p in qs.split("&")] if qs else []

    def body(v: Any) -> dict[str, Any] | None:
        if v is None:
            return None
        text = json.dumps(v)
        return {"size": len(text), "wire_size": len(text), "captured": len(text), "truncated": False,
                "decode_error": None, "encoding": "utf-8", "text": text}

    return {
        "v": 1, "request_start_ts": ts, "response_start_ts": ts + duration_ms / 2000, "response_end_ts":
        ts + duration_ms / 1000, "duration_ms": duration_ms, "connection_id": 1,
        "client": {"ip": "10.0.0.1", "port": 40000}, "server": {"ip": "10.0.0.2", "port": 443},
        "tls": {"version": "TLS1.3", "suite": "TLS_AES_128_GCM_SHA256", "sni": host, "alpn": "h2"},
        "http_version": "2", "stream_id": 1, "method": method, "scheme": "https", "authority": host,
        "target": target, "path": path, "query_string": qs or None, "query": query,
        "url": f"https://{host}{target}", "status": status, "reason": None,
        "request": {"headers": req_headers or [], "trailers": [],
                    "content_type": "application/json" if req_json is not None else None, "body": body(req_json)},
        "response": {"headers": [["content-type", resp_ct]] if resp_ct else [], "trailers": [],
                     "content_type": resp_ct, "body": body(resp_json)},
        "flags": [] if status is not None else ["no_response"],
    }
