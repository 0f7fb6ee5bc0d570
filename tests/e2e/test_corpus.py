"""The whole external corpus against the tshark oracle: decrypted bytes per stream, byte for byte."""

from __future__ import annotations

import json

import pytest

from tests.support.corpus import CORPUS, check_case, corpus_present, tcp_cases

pytestmark = [pytest.mark.corpus, pytest.mark.skipif(not corpus_present(), reason="../shared/corpus absent")]


def _cases() -> list[dict[str, object]]:
    return tcp_cases() if corpus_present() else []


@pytest.fixture(scope="module")
def oracle() -> dict[str, list[dict[str, object]]]:
    return json.loads((CORPUS / "oracle" / "streams.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: str(c["capture"]))
def test_capture_matches_oracle(case: dict[str, object], oracle: dict[str, list[dict[str, object]]]) -> None:
    result = check_case(case, oracle)
    assert result.ok, "\n".join(result.problems)


def test_unsupported_suites_are_named() -> None:
    """ARIA captures: the oracle cannot decrypt them either; we must say why, by suite name."""
    aria = [c for c in _cases() if "ARIA" in str(c["capture"])]
    assert aria
    for case in aria:
        result = check_case(case, {})
        assert result.connections
        for conn in result.connections:
            assert conn["outcome"] == "unsupported", conn
            assert "ARIA" in str(conn["reason"])
