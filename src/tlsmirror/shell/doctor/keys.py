"""The key listener: can a sender reach it, and do the keys it receives match the connections."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from typing import Any

from ..config import Config
from .metrics import Scrape
from .result import FAIL, OK, SKIP, WARN, Result, hostport, local_host, num, plural, see


def probe_key_listener(cfg: Config, timeout: float) -> Result:
    """TCP connect to the key listener and, with TLS, a handshake that sends nothing (a probe)."""
    k = cfg.keys
    label = "key listener"
    if not k.enabled:
        return Result(label, SKIP, "the key listener is off (keys.enabled: false)")
    if k.port == 0:
        return Result(label, SKIP, "keys.port is 0 (any free port): the port is not known, nothing probed")
    host = local_host(k.host)
    where = hostport(host, k.port)
    data: dict[str, Any] = {"address": where, "tls": k.tls}
    try:
        sock = socket.create_connection((host, k.port), timeout=timeout)
    except ConnectionRefusedError:
        return Result(label, FAIL, f"nothing listens on {where}", [
            "the sensor is not running, runs without the key listener (--no-keys), or on another "
            "keys.port; see the service and metrics lines", see("no-keys-arriving")], data)
    except TimeoutError:
        return Result(label, FAIL, f"{where} does not answer within {timeout:g} s", [
            "a firewall drops the connection, or keys.host is an address of another machine"], data)
    except OSError as exc:
        return Result(label, FAIL, f"cannot connect to {where}: {exc.strerror or exc}", [
            "check keys.host / keys.port"], data)
    refused_hint = ""
    if k.allow:
        import ipaddress

        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            if not any(ip in ipaddress.ip_network(c, strict=False) for c in k.allow):
                refused_hint = (f"keys.allow does not include {host}: the listener closes this probe; "
                                "that is expected, run doctor from an allowed host to test TLS")
    with sock:
        if not k.tls:
            return Result(label, OK, f"{where} accepts connections (plain TCP: secrets cross the network "
                                     "unencrypted)", data=data)
        if k.client_ca:
            return Result(label, OK, f"{where} accepts connections; TLS not probed: the listener "
                                     "requires a client certificate (keys.client_ca)", data=data)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock.settimeout(timeout)
        try:
            with ctx.wrap_socket(sock, server_hostname=None) as tls:
                version = tls.version() or "?"
                der = tls.getpeercert(binary_form=True)
        except (ssl.SSLError, OSError) as exc:
            advice = [refused_hint] if refused_hint else [
                "the listener accepts TCP but the TLS handshake fails: is keys.tls the same on both sides? "
                "is the certificate (keys.cert/keys.key, or the self-signed one in keys.state_dir) readable "
                "by the service user? the sensor's log says more"]
            status = WARN if refused_hint else FAIL
            return Result(label, status, f"{where}: TLS handshake failed: {exc}", advice, data)
    data["tls_version"] = version
    msg = f"{where} accepts TLS ({version})"
    res = Result(label, OK, msg, data=data)
    if der:
        try:
            from cryptography import x509

            cert = x509.load_der_x509_certificate(der)
            left = (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
            days = int(left // 86400)
            data["certificate_days_left"] = days
            if left <= 0:
                res.status = FAIL
                res.message += ", its certificate has EXPIRED"
                res.advice.append("senders that verify it (the F5 server-ssl profile) refuse it: renew "
                                  "keys.cert (or delete the self-signed pair in keys.state_dir and restart), "
                                  "import it on the F5, then `systemctl reload tlsmirror`")
            elif days < 14:
                res.status = WARN
                res.message += f", its certificate expires in {days} days"
                res.advice.append("renew keys.cert, import it on the F5 (server-ssl ca-file), then "
                                  "`systemctl reload tlsmirror` (SIGHUP reloads it)")
            else:
                res.message += f", certificate valid {days} more days"
        except (ValueError, ImportError):
            pass
    return res


def check_keys(cfg: Config, s0: Scrape | None, s1: Scrape | None, wait: float) -> Result:
    """Secrets arriving at the key listener; the listener's refusal counters."""
    label = "keys"
    if s0 is None:
        return Result(label, SKIP, "needs the metrics endpoint")
    last = s1 or s0
    received = last.value("keys_received")
    preloaded = last.value("keys_preloaded")
    matched = last.value("keys_matched")
    expired = last.value("keys_expired")
    delta = received - s0.value("keys_received") if s1 is not None else 0.0
    ks = last.by("keyserver", "counter")
    data: dict[str, Any] = {"received": received, "received_in_wait": delta, "preloaded": preloaded,
                            "matched": matched, "expired": expired, "keyserver": ks}
    if not cfg.keys.enabled:
        if preloaded:
            return Result(label, OK, f"key listener off; {num(preloaded)} secrets preloaded from key log "
                                     f"files, {num(matched)} matched", data=data)
        return Result(label, WARN, "no key source: the key listener is off and no key log file was loaded", [
            "nothing can be decrypted: enable the key listener (keys.enabled: true) for the F5 iRule, "
            "or give keys.keylog_files", see("no-keys-arriving")], data)
    advice: list[str] = []
    senders = ks.get("connections", 0) - ks.get("probes", 0) - ks.get("refused_network", 0)
    if ks.get("refused_network"):
        advice.append(f"{num(ks['refused_network'])} connections refused by keys.allow: add the F5 self IP of the "
                      "egress VLAN (SNAT automap) to keys.allow")
    if ks.get("tls_failed"):
        advice.append(f"{num(ks['tls_failed'])} TLS handshakes with senders failed: the F5 server-ssl profile "
                      "must trust the listener's certificate (ca-file = keyserver-cert.pem or keys.cert)")
    if ks.get("refused_client_cert"):
        advice.append(f"{num(ks['refused_client_cert'])} senders had no acceptable client certificate "
                      "(keys.client_ca): give the server-ssl profile a cert/key signed by that CA")
    if ks.get("not_tls"):
        advice.append(f"{num(ks['not_tls'])} senders spoke plain TCP to the TLS listener: the sideband virtual "
                      "server needs a server-ssl profile (or HSL: run the listener plain, keys.tls: false, "
                      "with keys.allow)")
    if ks.get("malformed"):
        advice.append(f"{num(ks['malformed'])} malformed key log lines: empty TLS 1.3 secrets mean the "
                      "BIG-IP lacks SSL::tls13_secret (upgrade, or limit the client-ssl profile to TLS 1.2); "
                      "paste the iRule again from `tlsmirror f5 irule`")
    if ks.get("evicted"):
        advice.append(f"{num(ks['evicted'])} sender connections evicted (listener full): raise "
                      "keys.max_connections or find what holds connections open")
    if received == 0:
        msg = "no secrets received since start"
        if ks:
            probes = ks.get("probes", 0)
            msg += f" ({plural(ks.get('connections', 0), 'connection')}, {num(probes)} of them doctor/monitor probes)"
        if preloaded:
            msg += f"; {num(preloaded)} preloaded from key log files"
        if senders <= 0 and not advice:
            advice.append("no sender connected: attach the iRule to the API's virtual server "
                          "(`tlsmirror f5 irule` / `f5 tmsh`), check that the sideband pool member is up and "
                          f"that TCP {cfg.keys.port} is allowed from the F5 self IPs to this host")
        advice.append(see("no-keys-arriving"))
        return Result(label, WARN, msg, advice, data)
    msg = f"{num(received)} secrets received"
    if s1 is not None:
        msg += f" (+{num(delta)} in {wait:g} s)"
    msg += f", {num(matched)} matched, {num(expired)} expired unused"
    res = Result(label, OK, msg, data=data)
    if s1 is not None and delta == 0:
        no_key = s1.value("tls_connections", outcome="no_key") - s0.value("tls_connections", outcome="no_key")
        if no_key > 0:
            res.status = WARN
            res.message += f"; none arrived while {num(no_key)} connections ended without their key"
            advice.insert(0, "secrets stopped arriving: the F5 log (/var/log/ltm, `tlsmirror:` lines) says why; "
                             "check the sideband pool member and the listener counters")
    if advice:
        res.status = WARN
        res.advice = [*advice, see("no-keys-arriving")]
    return res
