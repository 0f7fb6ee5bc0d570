"""The systemd unit, rendered as ``bin/install.sh`` renders it, and a stand-in for systemd's sandbox.

Where systemd is not PID 1 (containers, CI), ``systemd-run --property=...`` cannot start anything, so
``sandboxed()`` applies the unit's process restrictions itself, the way systemd does, and runs a command
under them:

- ``SystemCallFilter`` (with ``SystemCallErrorNumber``), ``SystemCallArchitectures=native``,
  ``RestrictAddressFamilies``, ``RestrictNamespaces``, ``RestrictRealtime``, ``LockPersonality`` and
  ``MemoryDenyWriteExecute``: one seccomp filter built with libseccomp (as systemd builds it; the syscall
  groups come from ``systemd-analyze syscall-filter``), loaded right before ``execve``;
- ``CapabilityBoundingSet`` / ``AmbientCapabilities`` / ``NoNewPrivileges``: ``setpriv``, with root's
  implicit capabilities switched off (securebits ``noroot``), so the process holds only the ambient set;
- ``ProtectProc=invisible`` / ``ProcSubset=pid``: a procfs mounted with those options in a mount namespace
  of its own (``unshare``);
- ``UMask``.

Not applied: the file-system settings done with mounts (``ProtectSystem``, ``ReadWritePaths``,
``PrivateTmp``, ``PrivateDevices``, ``ProtectHome``, ``ProtectKernelTunables``, ...: the tests' files
live in /tmp) and the user: the command runs as uid 0 without any of root's capabilities (this machine's
Python may live under /root), so ``ProtectProc=invisible`` hides other users' processes but not root's.
``SystemCallArchitectures=native`` is libseccomp's default (other ABIs kill the process).

Run as a module (``python3 -m tests.support.unitsandbox UNIT -- CMD...``) it is the last step: it loads the
filter and executes CMD.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

UNIT_TEMPLATE = REPO / "packaging" / "tlsmirror.service"
INSTALL_SH = REPO / "bin" / "install.sh"


def render_unit(template: Path = UNIT_TEMPLATE, install_sh: Path = INSTALL_SH) -> str:
    """The unit with install.sh's own ``sed -e "s|@X@|value|g"`` substitutions applied."""
    script = install_sh.read_text()
    shell_vars = dict(re.findall(r"^([A-Z_]+)=([A-Za-z0-9_./-]+)\s*$", script, re.M))
    text = template.read_text()
    subs = re.findall(r'-e "s\|(@[A-Z]+@)\|([^|"]*)\|g"', script)
    assert subs, "install.sh no longer renders the unit with sed -e \"s|@X@|...|g\": update render_unit"
    for placeholder, value in subs:
        value = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: shell_vars.get(m.group(1), m.group(0)), value)
        text = text.replace(placeholder, value)
    return text


def service_settings(unit: str) -> dict[str, list[str]]:
    """``[Service]`` assignments, every value of a repeated key in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, _, val = line.partition("=")
            out.setdefault(key.strip(), []).append(val.strip())
    return out


def syscall_group(name: str, _seen: set[str] | None = None) -> set[str]:
    """Every system call of a ``@group`` (nested groups expanded), as this systemd defines it."""
    seen = _seen if _seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    res = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True)
    calls: set[str] = set()
    for line in res.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= syscall_group(item, seen) if item.startswith("@") else {item}
    return calls


def allowed_syscalls(filters: list[str]) -> set[str]:
    """systemd's reading of ``SystemCallFilter=`` lines: an allow list, then ``~`` lines remove from it."""
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names: set[str] = set()
        for item in line.lstrip("~").split():
            names |= syscall_group(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


# ---------------------------------------------------------------- libseccomp through ctypes (x86-64 values)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 1, 4, 5, 7
AF_NAMES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
AF_MAX = 46
CLONE_NEW = {"cgroup": 0x02000000, "ipc": 0x08000000, "mnt": 0x00020000, "net": 0x40000000,
             "pid": 0x20000000, "user": 0x10000000, "uts": 0x04000000}
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
SCHED_FIFO, SCHED_RR, SCHED_DEADLINE = 1, 2, 6


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _Filter:
    def __init__(self, default_action: int) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        self.lib = ctypes.CDLL(name, use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                    ctypes.c_uint, ctypes.POINTER(_Cmp)]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(ctypes.c_uint32(default_action))
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def nr(self, name: str) -> int:
        return int(self.lib.seccomp_syscall_resolve_name(name.encode()))

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.nr(name)
        if nr < 0:
            return  # not a system call of this architecture
        arr = (_Cmp * max(1, len(cmps)))(*[_Cmp(*c) for c in cmps])
        rc = self.lib.seccomp_rule_add_array(self.ctx, ctypes.c_uint32(action), nr, len(cmps), arr)
        if rc < 0 and rc != -errno.EEXIST:
            raise OSError(-rc, f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load failed: {os.strerror(-rc)}")


def build_filters(settings: dict[str, list[str]]) -> list[_Filter]:
    """The unit's seccomp-based restrictions, one filter each as systemd (252) loads them: the kernel runs
    every filter and the strictest answer wins, so the argument rules need no ordering against the allow
    list. The allow list comes last (it must still permit loading the others)."""
    eperm = _errno_action(errno.EPERM)
    out: list[_Filter] = []

    families = (settings.get("RestrictAddressFamilies") or [""])[-1].split()
    if families:
        f = _Filter(SCMP_ACT_ALLOW)
        keep = {AF_NAMES[a] for a in families}
        for af in range(AF_MAX + 1):
            if af not in keep:
                f.rule(_errno_action(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, af, 0))
        f.rule(_errno_action(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_GE, AF_MAX + 1, 0))
        out.append(f)

    if (settings.get("RestrictNamespaces") or ["no"])[-1] == "yes":
        f = _Filter(SCMP_ACT_ALLOW)
        for flag in CLONE_NEW.values():
            f.rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
            f.rule(eperm, "unshare", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        f.rule(eperm, "setns")
        f.rule(_errno_action(errno.ENOSYS), "clone3")  # as systemd: glibc falls back to clone()
        out.append(f)

    if (settings.get("MemoryDenyWriteExecute") or ["no"])[-1] == "yes":
        f = _Filter(SCMP_ACT_ALLOW)
        wx = PROT_WRITE | PROT_EXEC
        f.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        f.rule(eperm, "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        out.append(f)

    if (settings.get("RestrictRealtime") or ["no"])[-1] == "yes":
        f = _Filter(SCMP_ACT_ALLOW)
        for policy in (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE):
            f.rule(eperm, "sched_setscheduler", (1, SCMP_CMP_EQ, policy, 0))
        f.rule(eperm, "sched_setattr")
        out.append(f)

    if (settings.get("LockPersonality") or ["no"])[-1] == "yes":
        f = _Filter(SCMP_ACT_ALLOW)
        f.rule(eperm, "personality", (0, SCMP_CMP_NE, 0, 0))  # PER_LINUX only, as systemd
        out.append(f)

    filters = settings.get("SystemCallFilter", [])
    if filters:
        err_name = (settings.get("SystemCallErrorNumber") or ["kill"])[-1]
        denied = 0x80000000 if err_name == "kill" else _errno_action(getattr(errno, err_name))
        f = _Filter(denied)
        for name in sorted(allowed_syscalls(filters)):
            f.rule(SCMP_ACT_ALLOW, name)
        out.append(f)
    return out


def sandboxed(cmd: list[str], unit: str) -> list[str]:
    """``cmd`` wrapped to run under ``unit``'s restrictions (see the module docstring). Needs root."""
    s = service_settings(unit)
    caps = [c.lower().removeprefix("cap_") for c in " ".join(s.get("AmbientCapabilities", [])).split()]
    bound = [c.lower().removeprefix("cap_") for c in " ".join(s.get("CapabilityBoundingSet", [])).split()]
    umask = (s.get("UMask") or ["0022"])[-1]
    mounts = []
    if s.get("ProtectProc") or s.get("ProcSubset"):
        opts = [f"hidepid={s['ProtectProc'][-1]}"] if s.get("ProtectProc") else []
        opts += [f"subset={s['ProcSubset'][-1]}"] if s.get("ProcSubset") else []
        mounts.append(f"mount -t proc -o {','.join(opts)} proc /proc")
    setpriv = [shutil.which("setpriv") or "setpriv",
               "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
               "--inh-caps=-all" + "".join(f",+{c}" for c in caps),
               "--ambient-caps=-all" + "".join(f",+{c}" for c in caps),
               "--bounding-set=-all" + "".join(f",+{c}" for c in bound)]
    if (s.get("NoNewPrivileges") or ["no"])[-1] == "yes" or s.get("SystemCallFilter"):
        setpriv.append("--no-new-privs")
    script = "; ".join([*mounts, f"umask {umask}", 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script, "sh",
            *setpriv, sys.executable, "-m", "tests.support.unitsandbox", "--unit-text", unit, "--", *cmd]


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--unit-text" or argv[2] != "--":
        print("usage: python3 -m tests.support.unitsandbox --unit-text UNIT -- CMD...", file=sys.stderr)
        return 2
    for f in build_filters(service_settings(argv[1])):
        f.load()
    os.execvp(argv[3], argv[3:])
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
