"""The http stage: the decrypted byte streams of one connection in, complete API calls out.

:class:`~tlsmirror.http.connection.HttpConnection` is the per-connection entry point. It is fed the
in-order client->server (direction 0) and server->client (direction 1) bytes of one TCP/TLS
connection, with explicit gaps, and returns :class:`~tlsmirror.http.events.Exchange` records (one
request paired with its response) and at most one :class:`~tlsmirror.http.events.HttpProblem` (the
error that ended HTTP parsing of that connection).

- HTTP/1.x (``h1``): llhttp (``httptools``) parses each message head; body framing
  (Content-Length, chunked with trailers, read-until-close) is tracked here so that message
  boundaries are known exactly, HEAD/CONNECT responses are framed from the paired request, and a
  gap inside a body resyncs.
- HTTP/2 (``h2``): ``hyperframe`` frames, ``hpack`` header decoding per direction, passive
  stream bookkeeping (no endpoint state machine).
- Bodies (``bodies``): bounded capture with incremental, capped content decoding.

Sans-IO: no sockets, threads, files or clocks; timestamps come from the caller.
"""
