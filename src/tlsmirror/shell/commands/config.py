"""`tlsmirror config check|show`: validate the configuration, print the effective one (secrets masked)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    from .run import add_config_flags

    p = sub.add_parser("config", help="check or show the configuration",
                       description="Validate the configuration (file + TLSMIRROR_* environment + --set) or "
                                   "print the effective configuration as YAML with secrets masked.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    check = csub.add_parser("check", help="validate; exit 1 with the key, the bad value and the fix")
    add_config_flags(check)
    check.add_argument("--root", default="", metavar="DIR",
                       help="check file paths below this staging root (what install.sh --root installed)")
    check.set_defaults(func=run_check)
    show = csub.add_parser("show", help="print the effective configuration (YAML, secrets masked)")
    add_config_flags(show)
    show.set_defaults(func=run_show)
    ref = csub.add_parser("reference", help="print the table of every key (Markdown)")
    ref.set_defaults(func=run_reference)


def _load(args: argparse.Namespace) -> Any:
    from ..config import load_config
    from .run import flags_from_args

    return load_config(args.config, env=os.environ, flags=flags_from_args(args), root=getattr(args, "root", ""))


def run_check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"configuration OK ({cfg.path or 'no file; defaults + environment + flags'})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ..config import show

    sys.stdout.write(show(_load(args)))
    return 0


def run_reference(args: argparse.Namespace) -> int:
    from ..config import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0
