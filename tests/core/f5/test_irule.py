"""The F5 iRule and tmsh script: the commands and events they must use, Tcl that parses (a brace and
quote checker, and tclsh), Tcl that runs (tclsh with stand-ins for the BIG-IP commands), a bash script
that runs (bash with a stand-in tmsh), and names that cannot inject anything."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tlsmirror.f5 import F5ConfigError, IruleOptions, TmshOptions, full_path, render_irule, render_tmsh
from tlsmirror.keys.keylog import parse_keylog
from tlsmirror.shell.commands import main

TCLSH = shutil.which("tclsh")
BASH = shutil.which("bash")
CR = bytes(range(32)).hex()
MS = bytes(range(100, 148)).hex()
TLS13 = {("client", "hs"): bytes(range(1, 49)).hex(), ("server", "hs"): bytes(range(2, 50)).hex(),
         ("client", "app"): bytes(range(3, 51)).hex(), ("server", "app"): bytes(range(4, 52)).hex()}


def tcl_balance_problems(text: str) -> list[str]:
    """A small Tcl checker, stricter than Tcl: every unescaped brace counts (also inside quotes), a
    quote opened at the start of a word is closed, and comments hold no braces (Tcl and F5's
    parser count them too)."""
    problems: list[str] = []
    depth = 0
    in_quote = False
    at_command_start = True
    prev = "\n"
    line_no = 1
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if text[i + 1:i + 2] == "\n":
                line_no += 1
            prev = " "
            i += 2
            continue
        if c == "\n":
            line_no += 1
        if not in_quote and at_command_start:
            if c in " \t\n;":
                prev = c
                i += 1
                continue
            if c == "#":
                end = text.find("\n", i)
                end = len(text) if end < 0 else end
                if "{" in text[i:end] or "}" in text[i:end]:
                    problems.append(f"line {line_no}: brace in a comment")
                i = end
                continue
        at_command_start = False
        if c == '"':
            if in_quote:
                in_quote = False
            elif prev in " \t\n[{;":
                in_quote = True
        elif c == "{":
            depth += 1
            if not in_quote:
                at_command_start = True  # a script body may start here
        elif c == "}":
            depth -= 1
            if depth < 0:
                problems.append(f"line {line_no}: unbalanced }}")
                depth = 0
        elif c in "[;\n" and not in_quote:
            at_command_start = True
        prev = c
        i += 1
    if depth:
        problems.append(f"{depth} unclosed {{")
    if in_quote:
        problems.append("unclosed quote")
    return problems


def test_balance_checker_catches_mistakes() -> None:
    assert tcl_balance_problems('when X {\n  set a "b"\n}\n') == []
    assert tcl_balance_problems("when X {\n  set a {b\n}\n") == ["1 unclosed {"]
    assert tcl_balance_problems("when X {\n}\n}\n") == ["line 3: unbalanced }"]
    assert tcl_balance_problems('when X {\n  log local0. "oops\n}\n') == ["unclosed quote"]
    assert tcl_balance_problems('when X {\n  set a "{"\n}\n') == ["1 unclosed {"]
    assert tcl_balance_problems("# a {comment}\nwhen X {\n}\n") == ["line 1: brace in a comment"]
    assert tcl_balance_problems('set a "x \\" y"\n') == []


@pytest.mark.parametrize("transport", ["sideband", "hsl"])
def test_irule_uses_the_right_events_and_commands(transport: str) -> None:
    text = render_irule(IruleOptions(transport=transport))
    assert tcl_balance_problems(text) == []
    for needle in ("when RULE_INIT {", "when CLIENTSSL_HANDSHAKE {", "[SSL::clientrandom]",
                   "[SSL::sessionsecret]", '[SSL::cipher version] eq "TLSv1.3"',
                   "[SSL::tls13_secret client hs]", "[SSL::tls13_secret server hs]",
                   "[SSL::tls13_secret client app]", "[SSL::tls13_secret server app]",
                   "CLIENT_RANDOM $tlsmirror_cr", "log local0.warn",
                   "CLIENT_HANDSHAKE_TRAFFIC_SECRET $tlsmirror_cr",
                   "SERVER_HANDSHAKE_TRAFFIC_SECRET $tlsmirror_cr",
                   "CLIENT_TRAFFIC_SECRET_0 $tlsmirror_cr", "SERVER_TRAFFIC_SECRET_0 $tlsmirror_cr"):
        assert needle in text, needle
    if transport == "sideband":
        assert re.search(r"connect -protocol TCP -timeout \S+ -idle \d+ \\\n\s+-status tlsmirror_status "
                         r"\$static::tlsmirror_keys_vs", text)
        assert "send -timeout" in text and "close $tlsmirror_conn" in text
        assert 'set static::tlsmirror_keys_vs "/Common/tlsmirror_keys_vs"' in text
    else:
        assert "HSL::open -proto TCP -pool $static::tlsmirror_keys_pool" in text
        assert "HSL::send $tlsmirror_hsl $tlsmirror_keys" in text
    # the secrets only ever go into the key lines, never into a log command
    for log_line in re.findall(r"log local0\.warn \"[^\"]*\"", text):
        assert "SSL::" not in log_line and "tlsmirror_keys\"" not in log_line


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
@pytest.mark.parametrize("transport", ["sideband", "hsl"])
def test_irule_is_complete_tcl(transport: str, tmp_path: Path) -> None:
    assert TCLSH is not None
    rule = tmp_path / "rule.tcl"
    rule.write_text(render_irule(IruleOptions(transport=transport)))
    script = f"set f [open {{{rule}}}]; set s [read $f]; close $f; puts [info complete $s]\n"
    out = subprocess.run([TCLSH], input=script, capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "1", out.stderr
    broken = tmp_path / "broken.tcl"
    broken.write_text(rule.read_text().rstrip().rstrip("}"))
    out = subprocess.run([TCLSH], input=script.replace(str(rule), str(broken)), capture_output=True,
                         text=True, timeout=20)
    assert out.stdout.strip() == "0"


# Stand-ins for the BIG-IP commands the iRule uses, recording what it does.
_STUBS = r"""
namespace eval static {}
namespace eval SSL {}
namespace eval IP {}
namespace eval TCP {}
namespace eval HSL {}
set ::sent ""
set ::logs {}
set ::calls {}
proc when {event body} { set ::events($event) $body }
proc SSL::clientrandom {} { return $::cr }
proc SSL::sessionsecret {} { return $::ms }
proc SSL::cipher {what} {
    if {$what ne "version"} { error "unexpected SSL::cipher $what" }
    return $::version
}
proc SSL::tls13_secret {side kind} {
    if {$::tls13_missing} { error {invalid command name "SSL::tls13_secret"} }
    if {$side eq "client" && $kind eq "early"} { return $::early }
    return $::tls13($side,$kind)
}
proc IP::client_addr {} { return 192.0.2.10 }
proc TCP::client_port {} { return 50123 }
proc log {facility msg} { lappend ::logs "$facility $msg" }
proc connect {args} {
    lappend ::calls [list connect {*}[lrange $args 0 end-1]]
    set i [lsearch -exact $args -status]
    if {$i >= 0} { upvar 1 [lindex $args [expr {$i + 1}]] status; set status connected }
    if {$::fail eq "connect"} { error "connection refused" }
    if {[lindex $args end] ne $::want_target} { error "wrong target [lindex $args end]" }
    return sb1
}
proc send {args} {
    set i [lsearch -exact $args -status]
    if {$i >= 0} { upvar 1 [lindex $args [expr {$i + 1}]] status; set status sent }
    if {$::fail eq "send"} { set status timeout; return 0 }
    if {[lindex $args end-1] ne "sb1"} { error "wrong connection" }
    append ::sent [lindex $args end]
    return [string length [lindex $args end]]
}
rename close tcl_close
proc close {conn} { lappend ::calls [list close $conn] }
proc HSL::open {args} { lappend ::calls [list HSL::open {*}$args]; return hsl1 }
proc HSL::send {handle data} {
    if {$::fail eq "send"} { return 0 }
    append ::sent $data
    return 1
}
"""


def run_irule_in_tclsh(text: str, version: str, fail: str, target: str, early: str = "",
                       tls13_missing: bool = False) -> dict[str, str]:
    assert TCLSH is not None
    tls13 = " ".join(f"{side},{kind} {value}" for (side, kind), value in TLS13.items())
    driver = (_STUBS + f"set ::cr {CR}\nset ::ms {MS}\nset ::version {version}\nset ::fail {fail}\n"
              f"set ::want_target {target}\narray set ::tls13 {{{tls13}}}\nset ::early {{{early}}}\n"
              f"set ::tls13_missing {int(tls13_missing)}\n"
              "source $::rule\n"
              "eval $::events(RULE_INIT)\n"
              # an event may end with `return` (code 2); an error (code 1) fails the run
              "if {[catch {eval $::events(CLIENTSSL_HANDSHAKE)} err] == 1} { error $err }\n"
              "foreach v {tlsmirror_keys tlsmirror_cr tlsmirror_early tlsmirror_conn tlsmirror_status "
              "tlsmirror_hsl} {\n"
              "  if {[info exists $v]} { error \"$v left set\" }\n}\n"
              "puts \"SENT<$::sent>\"\nputs \"LOGS<[join $::logs |]>\"\nputs \"CALLS<$::calls>\"\n")
    with tempfile.TemporaryDirectory() as d:
        rule = Path(d) / "rule.tcl"
        rule.write_text(text)
        out = subprocess.run([TCLSH], input=f"set ::rule {{{rule}}}\n" + driver, capture_output=True,
                             text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    m = re.search(r"SENT<(.*)>\nLOGS<(.*)>\nCALLS<(.*)>", out.stdout, re.S)
    assert m, out.stdout
    return {"sent": m.group(1), "logs": m.group(2), "calls": m.group(3)}


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
@pytest.mark.parametrize("transport", ["sideband", "hsl"])
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3", "TLSv1"])
def test_irule_runs_and_sends_valid_key_lines(transport: str, version: str) -> None:
    text = render_irule(IruleOptions(transport=transport, virtual="keys_vs", partition="Prod"))
    target = "/Prod/keys_vs" if transport == "sideband" else "/Common/tlsmirror_keys_pool"
    r = run_irule_in_tclsh(text, version, "none", target)
    secrets, problems = parse_keylog(r["sent"])
    assert not problems and r["sent"].endswith("\n")
    if version == "TLSv1.3":
        assert [s.label for s in secrets] == [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"]
        assert [s.value.hex() for s in secrets] == [TLS13["client", "hs"], TLS13["server", "hs"],
                                                    TLS13["client", "app"], TLS13["server", "app"]]
    else:
        assert [(s.label, s.value.hex()) for s in secrets] == [("CLIENT_RANDOM", MS)]
    assert all(s.ident.hex() == CR for s in secrets)
    assert r["logs"] == ""
    if transport == "sideband":
        assert r["calls"].startswith("{connect -protocol TCP -timeout 1000 -idle 5 -status tlsmirror_status}")
        assert r["calls"].endswith("{close sb1}")


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
@pytest.mark.parametrize(("transport", "fail"),
                         [("sideband", "connect"), ("sideband", "send"), ("hsl", "send")])
def test_irule_failures_are_logged_without_secrets(transport: str, fail: str) -> None:
    text = render_irule(IruleOptions(transport=transport))
    target = "/Common/tlsmirror_keys_vs"
    r = run_irule_in_tclsh(text, "TLSv1.3", fail, target)
    assert r["logs"].startswith("local0.warn tlsmirror: ")
    assert "192.0.2.10:50123" in r["logs"]
    for value in [CR, MS, *TLS13.values()]:
        assert value[:16] not in r["logs"]
    if transport == "sideband" and fail == "send":
        assert r["calls"].endswith("{close sb1}")  # the sideband connection is closed anyway


EARLY = bytes(range(5, 53)).hex()


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
@pytest.mark.parametrize("transport", ["sideband", "hsl"])
def test_irule_sends_the_0rtt_secret_when_there_is_one(transport: str) -> None:
    text = render_irule(IruleOptions(transport=transport))
    assert "[SSL::tls13_secret client early]" in text or "SSL::tls13_secret client early" in text
    assert "CLIENT_EARLY_TRAFFIC_SECRET" in text
    target = "/Common/tlsmirror_keys_vs" if transport == "sideband" else "/Common/tlsmirror_keys_pool"
    r = run_irule_in_tclsh(text, "TLSv1.3", "none", target, early=EARLY)
    secrets, problems = parse_keylog(r["sent"])
    assert not problems
    assert [s.label for s in secrets] == ["CLIENT_EARLY_TRAFFIC_SECRET", "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                                          "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
                                          "SERVER_TRAFFIC_SECRET_0"]
    assert secrets[0].value.hex() == EARLY and secrets[0].ident.hex() == CR
    # without early data (the usual case) no empty early line is sent
    r = run_irule_in_tclsh(text, "TLSv1.3", "none", target)
    assert "CLIENT_EARLY_TRAFFIC_SECRET" not in r["sent"] and len(r["sent"].splitlines()) == 4


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
@pytest.mark.parametrize("transport", ["sideband", "hsl"])
def test_tls12_only_variant(transport: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No SSL::tls13_secret anywhere (BIG-IP versions without it refuse to load such an iRule); TLS 1.2
    keys are sent, a TLS 1.3 session is logged (without a secret) and sends nothing."""
    assert main(["f5", "irule", "--tls12-only", "--transport", transport]) == 0
    text = capsys.readouterr().out
    assert text == render_irule(IruleOptions(transport=transport, tls12_only=True))
    assert "SSL::tls13_secret" not in text.replace("without SSL::tls13_secret", "")
    assert "tls13_secret" not in text.split("when RULE_INIT", 1)[1]
    assert tcl_balance_problems(text) == []
    target = "/Common/tlsmirror_keys_vs" if transport == "sideband" else "/Common/tlsmirror_keys_pool"
    r = run_irule_in_tclsh(text, "TLSv1.2", "none", target, tls13_missing=True)
    secrets, problems = parse_keylog(r["sent"])
    assert not problems and [(s.label, s.value.hex()) for s in secrets] == [("CLIENT_RANDOM", MS)]
    r = run_irule_in_tclsh(text, "TLSv1.3", "none", target, tls13_missing=True)
    assert r["sent"] == "" and r["calls"] == ""
    assert r["logs"].startswith("local0.warn tlsmirror: TLS 1.3 session of 192.0.2.10:50123")
    assert MS[:16] not in r["logs"]
    # the tmsh script loads the same variant
    script = render_tmsh(TmshOptions(sensor="10.0.0.5", virtual="api_vs", transport=transport, tls12_only=True))
    assert "SSL::tls13_secret client" not in script and "TLS 1.2-only variant" in script


@pytest.mark.parametrize("facility", ["local0", "local3"])
def test_log_facility_comment_names_the_facility(facility: str) -> None:
    text = render_irule(IruleOptions(log_facility=facility))
    note = next(line for line in text.splitlines() if line.startswith("# Failures are logged to"))
    assert f"logged to {facility} " in note
    assert ("/var/log/ltm" in note) == (facility == "local0")
    assert f"log {facility}.warn" in text and ("local0" in text) == (facility == "local0")


def test_names_are_checked() -> None:
    assert full_path("api_vs") == "/Common/api_vs"
    assert full_path("/Prod/app/api_vs") == "/Prod/app/api_vs"
    assert full_path("vs-1.2", "Prod") == "/Prod/vs-1.2"
    for bad in ("a b", "vs;rm", "[exec x]", "$x", "x}", 'a"b', "/Common/", "/x", "", "-x", "/Common/a b"):
        with pytest.raises(F5ConfigError):
            full_path(bad)
    with pytest.raises(F5ConfigError):
        render_irule(IruleOptions(virtual="x]; exec rm -rf /; #"))
    with pytest.raises(F5ConfigError):
        render_irule(IruleOptions(transport="udp"))
    with pytest.raises(F5ConfigError):
        render_irule(IruleOptions(log_facility="local0. [exec]"))
    with pytest.raises(F5ConfigError):
        render_tmsh(TmshOptions(sensor="sensor.example", virtual="api_vs"))
    with pytest.raises(F5ConfigError):
        render_tmsh(TmshOptions(sensor="10.0.0.5", virtual="api_vs", sensor_cert_file="/tmp/a b.pem"))
    with pytest.raises(F5ConfigError):
        render_tmsh(TmshOptions(sensor="10.0.0.5", virtual="api_vs", client_cert_file="/tmp/c.pem"))
    with pytest.raises(F5ConfigError):
        render_tmsh(TmshOptions(sensor="10.0.0.5", virtual="api_vs", transport="hsl",
                                sensor_cert_file="/tmp/s.pem"))


def test_tmsh_commands() -> None:
    text = render_tmsh(TmshOptions(sensor="10.1.2.3", virtual="api_vs",
                                   sensor_cert_file="/var/tmp/sensor.pem",
                                   client_cert_file="/var/tmp/c.pem", client_key_file="/var/tmp/c.key"))
    lines = text.splitlines()
    assert "tmsh create ltm node /Common/tlsmirror_sensor address 10.1.2.3" in lines
    assert ("tmsh create ltm pool /Common/tlsmirror_keys_pool members add { /Common/tlsmirror_sensor:8001 } "
            "monitor tcp") in lines
    assert ("tmsh install sys crypto cert /Common/tlsmirror_sensor_ca.crt from-local-file /var/tmp/sensor.pem"
            in lines)
    profile = next(x for x in lines if x.startswith("tmsh create ltm profile server-ssl"))
    assert "defaults-from /Common/serverssl" in profile
    assert "ca-file /Common/tlsmirror_sensor_ca.crt peer-cert-mode require" in profile
    assert "cert /Common/tlsmirror_client.crt key /Common/tlsmirror_client.key" in profile
    vs = next(x for x in lines if x.startswith("tmsh create ltm virtual /Common/tlsmirror_keys_vs"))
    for part in ("destination 192.0.2.1:8001", "ip-protocol tcp",
                 "/Common/tlsmirror_keys_serverssl { context serverside }",
                 "pool /Common/tlsmirror_keys_pool", "vlans-enabled",
                 "source-address-translation { type automap }"):
        assert part in vs
    assert ("tmsh create ltm pool /Common/tlsmirror_clone_pool members add { /Common/tlsmirror_sensor:0 } "
            "monitor gateway_icmp") in lines
    assert ("tmsh modify ltm virtual /Common/api_vs clone-pools add { /Common/tlsmirror_clone_pool "
            "{ context clientside } }") in lines
    assert "tmsh save sys config" in lines
    # the iRule inside the merge file is exactly `tlsmirror f5 irule`
    merge = text.split("<<'TLSMIRROR_IRULE_END'\n", 1)[1].split("\nTLSMIRROR_IRULE_END\n", 1)[0]
    assert merge == "ltm rule /Common/tlsmirror_keys {\n" + render_irule().rstrip("\n") + "\n}"
    assert tcl_balance_problems(merge) == []

    hsl = render_tmsh(TmshOptions(sensor="2001:db8::5", virtual="/Prod/api", transport="hsl", clone=False,
                                  partition="Prod"))
    assert "create ltm profile server-ssl" not in hsl and "create ltm virtual" not in hsl
    assert "clone-pools" not in hsl
    assert "members add { /Prod/tlsmirror_sensor.8001 }" in hsl
    assert "HSL::open -proto TCP -pool $static::tlsmirror_keys_pool" in hsl
    assert 'set static::tlsmirror_keys_pool "/Prod/tlsmirror_keys_pool"' in hsl


_FAKE_TMSH = """#!/bin/bash
echo "$*" >> "$TMSH_LOG"
if [ "$1 $2 $3" = "list ltm virtual" ]; then
  printf 'ltm virtual %s {\\n    rules {\\n' "$4"
  printf '        existing_rule_1\\n        /Common/tlsmirror_keys\\n        other_rule\\n'
  printf '    }\\n}\\n'
fi
if [ "$1 $2 $3 $4" = "load sys config merge" ]; then cp "$6" "$TMSH_LOG.merge"; fi
"""


@pytest.mark.skipif(BASH is None, reason="bash not installed")
def test_tmsh_script_runs_in_bash(tmp_path: Path) -> None:
    """The script under bash with a stand-in tmsh: quoting survives, existing iRules are kept."""
    assert BASH is not None
    tmsh = tmp_path / "bin" / "tmsh"
    tmsh.parent.mkdir()
    tmsh.write_text(_FAKE_TMSH)
    tmsh.chmod(tmsh.stat().st_mode | stat.S_IXUSR)
    merge = tmp_path / "rule.conf"
    script = render_tmsh(TmshOptions(sensor="10.1.2.3", virtual="api_vs", capture_ip="10.9.9.9",
                                     merge_file=str(merge)))
    assert subprocess.run([BASH, "-n"], input=script, text=True, timeout=20).returncode == 0
    log = tmp_path / "tmsh.log"
    env = {**os.environ, "PATH": f"{tmsh.parent}{os.pathsep}{os.environ['PATH']}", "TMSH_LOG": str(log)}
    out = subprocess.run([BASH], input=script, text=True, capture_output=True, env=env, timeout=20)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "create ltm node /Common/tlsmirror_sensor address 10.1.2.3"
    assert "create ltm node /Common/tlsmirror_sensor_capture address 10.9.9.9" in calls
    assert ("create ltm pool /Common/tlsmirror_clone_pool members add { /Common/tlsmirror_sensor_capture:0 } "
            "monitor gateway_icmp") in calls
    assert ("modify ltm virtual /Common/api_vs rules { existing_rule_1 other_rule /Common/tlsmirror_keys }"
            in calls)
    assert calls[-1] == "save sys config"
    assert (Path(str(log) + ".merge").read_text() ==
            "ltm rule /Common/tlsmirror_keys {\n" + render_irule().rstrip("\n") + "\n}\n")
    assert not merge.exists()  # removed after loading


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["f5", "irule"]) == 0
    assert capsys.readouterr().out == render_irule()
    assert main(["f5", "irule", "--transport", "hsl", "--pool", "keys"]) == 0
    assert 'set static::tlsmirror_keys_pool "/Common/keys"' in capsys.readouterr().out
    assert main(["f5", "tmsh", "--sensor", "10.0.0.5", "--virtual", "api_vs", "--port", "9001"]) == 0
    assert "members add { /Common/tlsmirror_sensor:9001 }" in capsys.readouterr().out
    assert main(["f5", "irule", "--virtual", "bad name"]) == 1
    assert "not a BIG-IP virtual server name" in capsys.readouterr().err
    assert main(["f5", "tmsh", "--sensor", "not-an-ip", "--virtual", "api_vs"]) == 1
