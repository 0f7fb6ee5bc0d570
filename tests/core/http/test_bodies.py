"""Body capture and Content-Encoding decoding (tlsmirror.http.bodies)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.http.bodies import BodyCollector, is_text, parse_encodings, utf8_cut

RAW = ("héllo wörld, ünïcode ✓ " * 400).encode()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def collect(encoded: bytes, encodings: list[str], limit: int = 1 << 20, step: int = 0,
            text: bool = False, ceiling: int | None = None):
    kw = {} if ceiling is None else {"ceiling": ceiling}
    c = BodyCollector(limit, encodings, text, **kw)
    if step:
        for i in range(0, len(encoded), step):
            c.write(encoded[i:i + step])
    else:
        c.write(encoded)
    return c.finish()


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("step", [0, 1, 7])
def test_each_encoding_decodes(name: str, step: int) -> None:
    enc = ENCODERS[name](RAW)
    body = collect(enc, [name], step=step)
    assert body.data == RAW
    assert body.size == len(RAW)
    assert body.wire_size == len(enc)
    assert not body.truncated and body.decode_error is None


def test_raw_deflate_and_multimember_gzip() -> None:
    assert collect(_raw_deflate(RAW), ["deflate"], step=1).data == RAW
    two = gzip.compress(b"abc") + gzip.compress(b"def")
    assert collect(two, ["gzip"], step=1).data == b"abcdef"


def test_stacked_encodings_undone_in_reverse_order() -> None:
    enc = zstandard.ZstdCompressor().compress(brotli.compress(gzip.compress(RAW)))
    body = collect(enc, parse_encodings("gzip, br , zstd"), step=5)
    assert body.data == RAW and body.size == len(RAW) and body.wire_size == len(enc)
    assert parse_encodings("identity, gzip") == ["gzip"]
    assert parse_encodings(None) == []


def test_limit_keeps_counting_and_text_cut_respects_utf8() -> None:
    enc = gzip.compress(RAW)
    body = collect(enc, ["gzip"], limit=101, text=True)
    assert body.truncated and body.size == len(RAW) and body.wire_size == len(enc)
    assert len(body.data) <= 101
    body.data.decode("utf-8")  # no split character
    assert RAW.startswith(body.data)
    plain = collect(RAW, [], limit=102)
    assert plain.data == RAW[:102] and plain.truncated and plain.size == len(RAW)


def test_utf8_cut() -> None:
    s = "a✓".encode()  # 1 + 3 bytes
    assert utf8_cut(s[:2]) == b"a"
    assert utf8_cut(s[:3]) == b"a"
    assert utf8_cut(s) == s
    assert utf8_cut(b"abc") == b"abc"
    assert utf8_cut(b"") == b""


def test_decode_error_keeps_raw_bytes() -> None:
    body = collect(b"this is not gzip", ["gzip"])
    assert body.decode_error is not None and body.decode_error.startswith("gzip:")
    assert body.data == b"this is not gzip" and body.size == body.wire_size == 16
    bad_br = collect(b"\xff" * 50, ["br"])
    assert bad_br.decode_error and bad_br.data == b"\xff" * 50
    bad_zstd = collect(b"\x28\xb5\x2f\xfd" + b"\xff" * 20, ["zstd"])
    assert bad_zstd.decode_error and bad_zstd.data.startswith(b"\x28\xb5")


def test_incomplete_stream_is_an_error_only_when_framing_completed() -> None:
    enc = gzip.compress(RAW)[:-20]
    c = BodyCollector(1 << 20, ["gzip"])
    c.write(enc)
    done = c.finish(complete=True)
    assert done.decode_error == "gzip: incomplete stream" and done.data == enc
    c = BodyCollector(1 << 20, ["gzip"])
    c.write(enc)
    cut = c.finish(complete=False)
    assert cut.decode_error is None and RAW.startswith(cut.data) and len(cut.data) > 1000


def test_unsupported_encoding_is_reported_raw() -> None:
    body = collect(b"xyz", ["compress"])
    assert body.decode_error == "unsupported content-encoding: compress" and body.data == b"xyz"


@pytest.mark.parametrize("name", ["gzip", "br", "zstd", "deflate"])
def test_decompression_bomb_stops_at_ceiling(name: str) -> None:
    bomb = ENCODERS[name](b"\0" * (8 << 20))
    body = collect(bomb, [name], limit=1000, ceiling=1 << 20)
    assert len(body.data) == 1000 and body.truncated
    assert body.decode_error is not None and "ceiling" in body.decode_error
    assert (1 << 20) < body.size <= (1 << 20) + (128 << 10)
    assert body.wire_size == len(bomb)


def test_gap_never_invents_bytes() -> None:
    c = BodyCollector(1000)
    c.write(b"abc")
    c.gap(10)
    c.write(b"def")
    body = c.finish()
    assert body.data == b"abc" and body.wire_size == 16 and body.size == 16 and body.truncated
    c = BodyCollector(1000, ["gzip"])
    enc = gzip.compress(RAW)
    c.write(enc[:30])
    c.gap(5)
    c.write(enc[35:])
    body = c.finish(complete=False)
    assert body.truncated and body.wire_size == len(enc) and RAW.startswith(body.data)


def test_is_text() -> None:
    assert is_text("text/html; charset=utf-8")
    assert is_text("application/json") and is_text("application/problem+json")
    assert is_text("application/x-www-form-urlencoded") and is_text("application/xml")
    assert not is_text("image/png") and not is_text(None)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), names=st.lists(
    st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "bogus"]), max_size=3),
    step=st.integers(1, 50), limit=st.integers(0, 100))
def test_random_input_never_raises(data: bytes, names: list[str], step: int, limit: int) -> None:
    body = collect(data, parse_encodings(", ".join(names)), limit=limit, step=step)
    assert len(body.data) <= max(limit, 0) or body.decode_error
    assert body.wire_size == len(data)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=2000), name=st.sampled_from(sorted(ENCODERS)),
       cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_split_points_do_not_matter(payload: bytes, name: str, cuts: list[int]) -> None:
    enc = ENCODERS[name](payload)
    c = BodyCollector(1 << 16, [name])
    prev = 0
    for cut in [*sorted({x % (len(enc) + 1) for x in cuts}), len(enc)]:
        c.write(enc[prev:cut])
        prev = cut
    body = c.finish()
    assert body == collect(enc, [name])
    assert body.data == payload
