"""`tlsmirror doctor`: checks of a running install, each with what to do when it is not OK.

The checks read the configuration (the same file, environment and defaults as ``tlsmirror run``),
the sensor's ``/metrics`` and ``/healthz`` twice (``wait`` seconds apart, for rates), the capture
interfaces' kernel counters, a short sample of the packets arriving on them (with ``CAP_NET_RAW``),
and probe the key listener (a TCP connect and a TLS handshake that sends nothing: the listener counts
it as a probe) and the OTLP collector (a TCP connect and an empty export request carrying the token).

Every network operation has a short timeout and the slow parts run in parallel during the wait, so a
run takes about ``wait`` + a few seconds at most. Results are :class:`.result.Result` objects: a status
(``OK``, ``WARN``, ``FAIL``, or ``SKIP`` when a check does not apply), one line of what was found, and
for anything not OK, what to do. Secrets (the OTLP token, key material) never appear in the output.

One module per thing probed: :mod:`.host` (configuration, service), :mod:`.metrics` (the sensor's
/metrics), :mod:`.mirror` (interfaces and a packet sample, decoded with :mod:`tlsmirror.frames`),
:mod:`.keys` (the key listener), :mod:`.exporter` (the OTLP collector); :mod:`.run` runs them all and
:mod:`.result` prints them.
"""
