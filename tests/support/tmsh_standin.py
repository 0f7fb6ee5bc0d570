"""A stand-in for BIG-IP's ``tmsh``, for running the scripts of ``tlsmirror f5 tmsh`` under bash.

:func:`install` writes an executable ``tmsh`` into a directory (put it first on PATH); it keeps the
BIG-IP's objects in a JSON state file and exits 1, with a message on stderr, on what a real BIG-IP
refuses: creating an object that exists (or a second node for one address), referring to one that
does not (a pool member's node, a virtual server's pool or profiles, a profile's certificates, an
iRule's sideband virtual server or pool, the rules and clone pools attached to a virtual server), a
file that is not there, or a command it does not know. The API's virtual server (with two iRules of
its own) and BIG-IP's built-in profiles and monitors exist from the start.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

State = dict[str, dict[str, Any]]


def initial_state(virtual: str, rules: tuple[str, ...] = ("/Common/existing_rule_1", "/Common/other_rule")) -> State:
    return {
        "node": {}, "pool": {}, "virtual": {virtual: {"rules": list(rules), "clone-pools": []}},
        "rule": {r: {"text": ""} for r in rules},
        "profile": {"/Common/tcp": {}, "/Common/serverssl": {}, "/Common/clientssl": {}},
        "monitor": {"tcp": {}, "gateway_icmp": {}}, "cert": {}, "key": {},
    }


def install(bin_dir: Path, state_file: Path, virtual: str) -> dict[str, str]:
    """The stand-in ``tmsh`` in ``bin_dir``; returns the environment that runs scripts against it."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(initial_state(virtual)))
    tmsh = bin_dir / "tmsh"
    tmsh.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
                    "from tests.support.tmsh_standin import main\nsys.exit(main(sys.argv[1:]))\n")
    tmsh.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMSH_STATE": str(state_file)}


def load(state_file: Path) -> State:
    result: State = json.loads(state_file.read_text())
    return result


class Refused(Exception):
    pass


def _need(state: State, kind: str, name: str, why: str) -> None:
    if name not in state[kind]:
        raise Refused(f"{why}: {kind} {name} does not exist")


def _create(state: State, kind: str, name: str, attrs: dict[str, Any]) -> None:
    if name in state[kind]:
        raise Refused(f"01020066:3: The requested {kind} ({name}) already exists")
    state[kind][name] = attrs


def _braced(words: list[str], start: int) -> tuple[list[str], int]:
    """The words inside ``{ ... }`` starting at words[start] == '{' (nested braces kept), and the end."""
    assert words[start] == "{", words[start:]
    depth, out, i = 0, [], start
    while True:
        w = words[i]
        if w == "{":
            depth += 1
            if depth > 1:
                out.append(w)
        elif w == "}":
            depth -= 1
            if depth == 0:
                return out, i + 1
            out.append(w)
        else:
            out.append(w)
        i += 1


def _node_of(member: str) -> str:
    return re.sub(r"[:.]\d+$", "", member)


def run(state: State, argv: list[str]) -> str:
    w = argv
    if w[:3] == ["create", "ltm", "node"]:
        if len(w) != 6 or w[4] != "address":
            raise Refused(f"syntax: {' '.join(w)}")
        taken = [n for n, attrs in state["node"].items() if attrs["address"] == w[5] and n != w[3]]
        if taken:  # BIG-IP keeps one node per address
            raise Refused(f"01020066:3: The requested node address ({w[5]}) already exists: node {taken[0]}")
        _create(state, "node", w[3], {"address": w[5]})
    elif w[:3] == ["create", "ltm", "pool"]:
        name, rest = w[3], w[4:]
        members: list[str] = []
        priority: dict[str, int] = {}
        monitor = None
        extra: dict[str, Any] = {}
        i = 0
        while i < len(rest):
            if rest[i:i + 2] == ["members", "add"]:
                inner, i = _braced(rest, i + 2)
                j = 0
                while j < len(inner):  # NAME:PORT, optionally followed by { priority-group N }
                    members.append(inner[j])
                    if inner[j + 1:j + 2] == ["{"]:
                        attrs, j = _braced(inner, j + 1)
                        if len(attrs) != 2 or attrs[0] != "priority-group" or not attrs[1].isdigit():
                            raise Refused(f"syntax: member {members[-1]} {{ {' '.join(attrs)} }}")
                        priority[members[-1]] = int(attrs[1])
                    else:
                        j += 1
            elif rest[i] == "min-active-members":
                if not rest[i + 1].isdigit():
                    raise Refused(f"syntax: min-active-members {rest[i + 1]}")
                extra["min-active-members"] = int(rest[i + 1])
                i += 2
            elif rest[i] == "monitor":
                monitor = rest[i + 1]
                i += 2
            else:
                raise Refused(f"syntax: {rest[i]}")
        for m in members:
            _need(state, "node", _node_of(m), f"pool {name} member {m}")
        if monitor:
            _need(state, "monitor", monitor, f"pool {name}")
        if priority:
            extra["priority-groups"] = priority
        _create(state, "pool", name, {"members": members, "monitor": monitor, **extra})
    elif w[:4] == ["create", "ltm", "profile", "server-ssl"]:
        name, rest = w[4], w[5:]
        attrs = dict(zip(rest[::2], rest[1::2], strict=True))
        _need(state, "profile", attrs.get("defaults-from", "?"), f"profile {name}")
        if "ca-file" in attrs:
            _need(state, "cert", attrs["ca-file"], f"profile {name}")
        if "cert" in attrs:
            _need(state, "cert", attrs["cert"], f"profile {name}")
            _need(state, "key", attrs["key"], f"profile {name}")
        _create(state, "profile", name, attrs)
    elif w[:4] in (["install", "sys", "crypto", "cert"], ["install", "sys", "crypto", "key"]):
        if len(w) != 7 or w[5] != "from-local-file":
            raise Refused(f"syntax: {' '.join(w)}")
        if not os.path.isfile(w[6]):
            raise Refused(f"file {w[6]} does not exist")
        _create(state, w[3], w[4], {"file": w[6]})
    elif w[:3] == ["create", "ltm", "virtual"]:
        name, rest = w[3], w[4:]
        attrs: dict[str, Any] = {"rules": [], "clone-pools": []}
        i = 0
        while i < len(rest):
            if rest[i:i + 2] == ["profiles", "add"]:
                inner, i = _braced(rest, i + 2)
                # the names followed by their own { ... } settings
                profiles = [x for x, nxt in itertools.pairwise(inner) if x not in "{}" and nxt == "{"]
                for prof in profiles:
                    _need(state, "profile", prof, f"virtual {name}")
                attrs["profiles"] = profiles
            elif rest[i] == "source-address-translation":
                attrs["snat"], i = _braced(rest, i + 1)
            elif rest[i] == "vlans-enabled":
                attrs["vlans-enabled"] = []
                i += 1
            else:
                attrs[rest[i]] = rest[i + 1]
                i += 2
        if "pool" in attrs:
            _need(state, "pool", attrs["pool"], f"virtual {name}")
        _create(state, "virtual", name, attrs)
    elif w[:4] == ["load", "sys", "config", "merge"] and w[4] == "file":
        text = Path(w[5]).read_text()
        m = re.match(r"ltm rule (\S+) \{\n", text)
        if not m:
            raise Refused(f"{w[5]}: not an ltm rule")
        for target in re.findall(r'set static::tlsmirror_keys_vs "([^"]+)"', text):
            _need(state, "virtual", target, f"rule {m.group(1)}")
        for target in re.findall(r'set static::tlsmirror_keys_pool "([^"]+)"', text):
            _need(state, "pool", target, f"rule {m.group(1)}")
        if w[6:] != ["verify"]:
            state["rule"][m.group(1)] = {"text": text}  # a merge replaces a rule of the same name
    elif w[:3] == ["list", "ltm", "virtual"] and w[4:] == ["rules"]:
        _need(state, "virtual", w[3], "list")
        rules = "".join(f"        {r}\n" for r in state["virtual"][w[3]]["rules"])
        return f"ltm virtual {w[3]} {{\n    rules {{\n{rules}    }}\n}}\n"
    elif w[:3] == ["modify", "ltm", "virtual"] and w[4] == "rules":
        _need(state, "virtual", w[3], "modify")
        rules, end = _braced(w, 5)
        if end != len(w):
            raise Refused(f"syntax: {' '.join(w)}")
        for r in rules:
            _need(state, "rule", r if r.startswith("/") else f"/Common/{r}", f"virtual {w[3]} rules")
        if len(set(rules)) != len(rules):
            raise Refused(f"virtual {w[3]}: a rule twice in {rules}")
        state["virtual"][w[3]]["rules"] = rules
    elif w[:3] == ["modify", "ltm", "virtual"] and w[4:6] == ["clone-pools", "add"]:
        _need(state, "virtual", w[3], "modify")
        inner, _ = _braced(w, 6)
        pool = inner[0]
        _need(state, "pool", pool, f"virtual {w[3]} clone-pools")
        if pool in state["virtual"][w[3]]["clone-pools"]:
            raise Refused(f"virtual {w[3]}: clone pool {pool} already attached")
        state["virtual"][w[3]]["clone-pools"].append(pool)
        state["virtual"][w[3]]["clone-context"] = inner[2:4]
    elif w == ["save", "sys", "config"]:
        state["saved"] = {"yes": True}
    else:
        raise Refused(f"unknown command: {' '.join(w)}")
    return ""


def main(argv: list[str]) -> int:
    path = Path(os.environ["TMSH_STATE"])
    state = load(path)
    state.setdefault("calls", {}).setdefault("log", []).append(" ".join(argv))
    try:
        out = run(state, argv)
    except Refused as exc:
        path.write_text(json.dumps(state))
        print(f"tmsh: {exc}", file=sys.stderr)
        return 1
    path.write_text(json.dumps(state))
    sys.stdout.write(out)
    return 0
