"""GraphQL reading: operations, fields, response errors; malformed bodies and documents (hypothesis)."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.calls import ApiCall, Connection
from tlsmirror.http.events import Body, Exchange
from tlsmirror.http.graphql import GraphqlError, graphql_info, operations
from tlsmirror.record import call_to_dict
from tlsmirror.spans import call_to_span

DOC = '''
# a comment with { braces and "quotes"
query GetUser($id: ID!, $flag: Boolean = false) @cached(ttl: 60) {
  user(id: $id, note: "a } brace") { id name ...UserBits }
  me: viewer { id }
  ... on Query { version }
  ...Extra @include(if: $flag)
  description(text: """block "string" with } """)
}
mutation SetName { setName(name: "x") { ok } }
fragment UserBits on User { email }
'''


def _body(data: bytes, truncated: bool = False) -> Body:
    return Body(data, len(data), len(data), truncated)


def _ex(req: bytes | None, resp: bytes | None = None, *, method: str = "POST", path: str = "/api") -> Exchange:
    return Exchange("1.1", method, None, "h", path, 200, "OK", (("Content-Type", "application/json"),),
                    (("Content-Type", "application/json"),), (), (), None if req is None else _body(req),
                    None if resp is None else _body(resp), 1.0, 1.0, 1.0, 1.0, None, frozenset())


def _call(ex: Exchange) -> ApiCall:
    return ApiCall(Connection(1, "10.0.0.1", 5000, "10.0.0.2", 443, True), ex)


def test_lexer_finds_operations_and_top_level_fields() -> None:
    ops = operations(DOC)
    assert [(o.type, o.name) for o in ops] == [("query", "GetUser"), ("mutation", "SetName")]
    assert ops[0].fields == ["user", "viewer", "version", "description"]
    assert ops[1].fields == ["setName"]
    assert [(o.type, o.name, o.fields) for o in operations("{ a b { c } }")] == [("query", None, ["a", "b"])]


def test_operation_selected_by_name_and_response_errors() -> None:
    req = json.dumps({"query": DOC, "operationName": "SetName", "variables": {}}).encode()
    resp = json.dumps({"data": None, "errors": [{"message": "not allowed"}]}).encode()
    ex = _ex(req, resp)
    rec = call_to_dict(_call(ex))
    g = rec["graphql"]
    assert (g["operation_type"], g["operation_name"], g["fields"]) == ("mutation", "SetName", ["setName"])
    assert g["operations"] == [{"type": "query", "name": "GetUser"}, {"type": "mutation", "name": "SetName"}]
    assert (g["errors"], g["error_messages"], g["data"]) == (1, ["not allowed"], False)
    span = call_to_span(_call(ex), profile="semconv")
    attrs = dict(span.attributes)
    assert span.name == "mutation SetName"
    assert attrs["graphql.operation.type"] == "mutation" and attrs["graphql.operation.name"] == "SetName"
    assert span.error and span.status_message == "GraphQL errors: 1"


def test_get_with_query_parameter() -> None:
    ex = _ex(None, b'{"data":{"a":1}}', method="GET", path="/graphql?query=query%20Q%7Ba%7D&operationName=Q")
    info = graphql_info(ex)
    assert info is not None and (info.operation_type, info.operation_name, info.fields) == ("query", "Q", ["a"])
    assert info.errors == 0 and info.has_data
    assert call_to_span(_call(ex)).name == "query Q"


def test_not_graphql_stays_plain() -> None:
    for req in (b'{"query": {"match": {"a": 1}}}', b'{"query": "shoes"}', b'{"other": 1}', b"query=x"):
        assert "graphql" not in call_to_dict(_call(_ex(req))), req
    assert "graphql" not in call_to_dict(_call(_ex(None, method="GET", path="/search?query=shoes")))


def test_on_graphql_path_a_bad_body_is_flagged() -> None:
    info = graphql_info(_ex(b'{"query": "query { a(", "operationName": "X"}', path="/graphql"))
    assert info is not None and info.flags == {"graphql_bad_query"} and info.operation_name == "X"
    info = graphql_info(_ex(b"not json", path="/graphql"))
    assert info is not None and "graphql_no_query" in info.flags
    pq = b'{"operationName":"P","extensions":{"persistedQuery":{"version":1,"sha256Hash":"abc"}}}'
    info = graphql_info(_ex(pq, path="/graphql"))
    assert info is not None and info.persisted_hash == "abc" and info.operation_name == "P"


def test_bad_documents_raise_only_graphql_error() -> None:
    for doc in ("", "query", "query {", "{ a(b: ", "type X { a }", "fragment F { a }", '{ a(b: "x) }', "{ ... }"):
        try:
            operations(doc)
        except GraphqlError:
            continue
        raise AssertionError(doc)


_GQL = st.text(alphabet='{}()[]:$@!=|&.,"# \n\\query mutation fragment on abc _1', max_size=120)


@settings(max_examples=400, deadline=None)
@given(_GQL)
def test_lexer_never_raises_anything_else(doc: str) -> None:
    with contextlib.suppress(GraphqlError):
        operations(doc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_GQL, st.text(max_size=60)), st.one_of(st.none(), st.text(max_size=10)),
       st.binary(max_size=80), st.booleans())
def test_malformed_bodies_give_a_partial_record(doc: str, name: str | None, resp: bytes, cut: bool) -> None:
    req = json.dumps({"query": doc, "operationName": name}).encode()
    if cut:
        req = req[: len(req) // 2]
    for path in ("/graphql", "/api"):
        ex = _ex(req, resp, path=path)
        rec = call_to_dict(_call(ex))
        call_to_span(_call(ex))
        if path == "/graphql":
            assert "graphql" in rec


def test_configured_paths_and_limits() -> None:
    from tlsmirror.http.graphql import GraphqlOptions
    from tlsmirror.spans import SpanMapper

    opts = GraphqlOptions(paths=("/api/gql",), max_fields=2, max_errors=1)
    bad = _ex(b"not json", path="/api/gql")
    assert "graphql" not in call_to_dict(_call(bad))  # not a GraphQL path by default
    rec = call_to_dict(_call(bad), graphql=opts)
    assert "graphql_no_query" in rec["graphql"]["flags"]
    assert graphql_info(_ex(b"not json", path="/graphql"), options=opts) is None  # the default path is replaced
    req = json.dumps({"query": "{ a b c d }"}).encode()
    resp = json.dumps({"data": None, "errors": [{"message": "one"}, {"message": "two"}]}).encode()
    g = call_to_dict(_call(_ex(req, resp)), graphql=opts)["graphql"]
    assert g["fields"] == ["a", "b"] and g["errors"] == 2 and g["error_messages"] == ["one"]
    assert dict(SpanMapper("semconv", graphql=opts).span(_call(_ex(req, resp))).attributes)[
        "tlsmirror.graphql.fields"] == ("a", "b")
    assert call_to_dict(_call(_ex(req, resp)))["graphql"]["fields"] == ["a", "b", "c", "d"]
