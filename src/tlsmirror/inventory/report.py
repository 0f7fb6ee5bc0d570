"""The inventory as one self-contained HTML page: inline CSS and JS, inline SVG charts, nothing fetched
at view time. Pure: a string from the inventory dict (and an optional diff)."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f4;cursor:pointer}tr.ep:hover{background:#fafaf0}
.m{font-family:ui-monospace,monospace}.bar{display:inline-flex;width:120px;height:10px;background:#eee}
.bar span{display:block;height:10px}.s2{background:#3a3}.s3{background:#39c}.s4{background:#e90}
.s5{background:#d33}.sn{background:#999}.tag{display:inline-block;background:#fde2e2;border-radius:3px;
padding:0 4px;margin:1px;font-size:12px}.auth{background:#e2ecfd}.detail{display:none;background:#fcfcfc}
.detail.open{display:table-row}pre{margin:0;font-size:12px;white-space:pre-wrap}
input{padding:4px;width:300px;margin-bottom:8px}
"""

_JS = """
document.getElementById('filter').addEventListener('input', function (e) {
  var q = e.target.value.toLowerCase();
  document.querySelectorAll('tr.ep').forEach(function (tr) {
    var hit = tr.dataset.key.toLowerCase().indexOf(q) >= 0;
    tr.style.display = hit ? '' : 'none';
    var d = document.getElementById(tr.dataset.detail);
    if (!hit && d) { d.classList.remove('open'); }
  });
});
document.querySelectorAll('tr.ep').forEach(function (tr) {
  tr.addEventListener('click', function () {
    document.getElementById(tr.dataset.detail).classList.toggle('open');
  });
});
document.querySelectorAll('th[data-col]').forEach(function (th) {
  th.addEventListener('click', function () {
    var col = +th.dataset.col, body = document.querySelector('#endpoints tbody');
    var rows = Array.prototype.slice.call(body.querySelectorAll('tr.ep'));
    var num = th.dataset.num === '1', dir = th.dataset.dir === 'asc' ? -1 : 1;
    th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.children[col].dataset.v, y = b.children[col].dataset.v;
      return num ? dir * ((+x) - (+y)) : dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); body.appendChild(document.getElementById(r.dataset.detail)); });
  });
});
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _ts(t: float | None) -> str:
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _status_bar(status: Mapping[str, int]) -> str:
    total = sum(status.values()) or 1
    parts = []
    for s, n in sorted(status.items()):
        cls = "s" + (s[0] if s[:1] in "2345" else "n")
        parts.append(f'<span class="{cls}" style="width:{n * 100 / total:.1f}%" title="{_e(s)}: {n}"></span>')
    return '<span class="bar">' + "".join(parts) + "</span>"


def latency_svg(timeline: Sequence[Mapping[str, Any]], width: int = 560, height: int = 140) -> str:
    """An inline SVG line chart of p50/p95/p99 per time bucket."""
    pts = [b for b in timeline if b.get("p50") is not None]
    if not pts:
        return '<svg class="chart" width="0" height="0"></svg>'
    top = max(float(b.get("p99") or 0) for b in pts) or 1.0
    pad = 30
    n = len(pts)

    def xy(i: int, v: float) -> str:
        x = pad + (i * (width - pad - 10) / max(n - 1, 1))
        y = height - 20 - v / top * (height - 30)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for key, color in (("p50", "#3a3"), ("p95", "#e90"), ("p99", "#d33")):
        coords = " ".join(xy(i, float(b.get(key) or 0)) for i, b in enumerate(pts))
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}">'
                     f"<title>{key}</title></polyline>")
        if n == 1:
            x, y = coords.split(",")
            lines.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>')
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="latency">'
            f'<line x1="{pad}" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" stroke="#999"/>'
            f'<text x="2" y="14" font-size="10">{top:.1f} ms</text>'
            f'<text x="{pad}" y="{height - 5}" font-size="10">{_e(_ts(pts[0].get("t")))}</text>'
            f'<text x="{width - 150}" y="{height - 5}" font-size="10">{_e(_ts(pts[-1].get("t")))}</text>'
            + "".join(lines)
            + '<text x="60" y="14" font-size="10" fill="#3a3">p50</text>'
              '<text x="90" y="14" font-size="10" fill="#e90">p95</text>'
              '<text x="120" y="14" font-size="10" fill="#d33">p99</text></svg>')


def _detail(ep: Mapping[str, Any]) -> str:
    parts = [f"<h3 class=m>{_e(ep['method'])} {_e(ep['route'])}</h3>", latency_svg(ep.get("timeline") or [])]
    params = [f"path {p['name']}: {p['type']}" for p in ep.get("path_params", [])]
    params += [f"query {p['name']}{'' if p['required'] else '?'}: {p['schema'].get('type')}"
               for p in ep.get("query", [])]
    params += [f"header {p['name']}{'' if p['required'] else '?'}" for p in ep.get("headers", [])]
    if params:
        parts.append("<p><b>Parameters</b>: " + ", ".join(_e(p) for p in params) + "</p>")
    req = ep.get("request") or {}
    if req.get("schema") is not None:
        parts.append("<p><b>Request body</b></p><pre>" + _e(json.dumps(req["schema"], indent=1)) + "</pre>")
    for s, r in (ep.get("responses") or {}).items():
        if r.get("schema") is not None:
            parts.append(f"<p><b>Response {_e(s)}</b></p><pre>" + _e(json.dumps(r["schema"], indent=1)) + "</pre>")
    if ep.get("sensitive"):
        parts.append("<p><b>Sensitive data</b>: " + ", ".join(
            f'<span class="tag">{_e(s["type"])} @ {_e(s["location"])} ({s["count"]})</span>'
            for s in ep["sensitive"]) + "</p>")
    return "".join(parts)


def _diff_html(d: Mapping[str, Any]) -> str:
    out = ["<h2>Changes against the previous inventory / specification</h2>"]
    for key, label in (("new", "New endpoints"), ("removed", "Removed endpoints (not seen)")):
        items = d.get(key) or []
        out.append(f"<p><b>{label}</b> ({len(items)}): " + (", ".join(f"<span class=m>{_e(i)}</span>"
                                                                      for i in items) or "none") + "</p>")
    changed = d.get("changed") or []
    out.append(f"<p><b>Changed endpoints</b> ({len(changed)})</p>")
    if changed:
        out.append('<table id="changes"><tr><th>endpoint</th><th>change</th></tr>')
        for c in changed:
            rest = {k: v for k, v in c.items() if k != "endpoint"}
            out.append(f"<tr><td class=m>{_e(c['endpoint'])}</td><td><pre>{_e(json.dumps(rest))}</pre></td></tr>")
        out.append("</table>")
    return "".join(out)


def render(inv: Mapping[str, Any], diff: Mapping[str, Any] | None = None, title: str = "API inventory") -> str:
    """The HTML report of an inventory dict."""
    rows = []
    totals: dict[str, int] = {}
    n_eps = 0
    i = 0
    for svc in inv.get("services", []):
        for ep in svc.get("endpoints", []):
            i += 1
            n_eps += 1
            for s, n in ep["status"].items():
                totals[s] = totals.get(s, 0) + n
            lat = ep.get("latency_ms") or {}
            key = f"{svc['host']} {ep['method']} {ep['route']}"
            sens = sorted({s["type"] for s in ep.get("sensitive", [])})
            auth = sorted(ep.get("auth") or {})
            cells = [
                (svc["host"], _e(svc["host"]), False),
                (ep["method"], _e(ep["method"]), False),
                (ep["route"], f"<span class=m>{_e(ep['route'])}</span>", False),
                (ep["count"], str(ep["count"]), True),
                (ep["status"].get("200", 0), _status_bar(ep["status"]), True),
                (lat.get("p50") or 0, "" if lat.get("p50") is None else f"{lat['p50']:.1f}", True),
                (lat.get("p95") or 0, "" if lat.get("p95") is None else f"{lat['p95']:.1f}", True),
                (lat.get("p99") or 0, "" if lat.get("p99") is None else f"{lat['p99']:.1f}", True),
                (ep.get("first_seen") or 0, _e(_ts(ep.get("first_seen"))), True),
                (ep.get("last_seen") or 0, _e(_ts(ep.get("last_seen"))), True),
                (" ".join(auth), "".join(f'<span class="tag auth">{_e(a)}</span>' for a in auth), False),
                (" ".join(sens), "".join(f'<span class="tag">{_e(s)}</span>' for s in sens), False),
            ]
            tds = "".join(f'<td data-v="{_e(v)}">{h}</td>' for v, h, _ in cells)
            rows.append(f'<tr class="ep" data-key="{_e(key)}" data-detail="d{i}">{tds}</tr>'
                        f'<tr class="detail" id="d{i}"><td colspan="{len(cells)}">{_detail(ep)}</td></tr>')
    heads = ["service", "method", "route", "calls", "status", "p50 ms", "p95 ms", "p99 ms", "first seen",
             "last seen", "auth", "sensitive"]
    numeric = {3, 4, 5, 6, 7, 8, 9}
    th = "".join(f'<th data-col="{c}" data-num="{1 if c in numeric else 0}">{_e(h)}</th>' for c, h in enumerate(heads))
    summary = (f"<p>{inv.get('calls', 0)} calls, {n_eps} endpoints on {len(inv.get('services', []))} services, "
               f"from {_e(_ts(inv.get('first_seen')))} to {_e(_ts(inv.get('last_seen')))}. "
               f"Status mix: {_status_bar(totals)} "
               + ", ".join(f"{_e(s)}: {n}" for s, n in sorted(totals.items())) + "</p>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>{summary}"
            '<input id="filter" placeholder="filter endpoints" aria-label="filter">'
            f'<table id="endpoints"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            + (_diff_html(diff) if diff is not None else "")
            + f"<script>{_JS}</script></body></html>")
