"""The root of every exception tlsmirror raises on purpose.

Each core stage has its own family in its ``errors.py`` (``frames``, ``tls``, ``http``, ``keys``, ``f5``)
and the shell has one (:mod:`tlsmirror.shell.errors`); all of them derive from :class:`TlsmirrorError`, so
``except TlsmirrorError`` catches anything the project raises and nothing it does not. The stage families
are also ``ValueError`` (bad input), as they always were.
"""

from __future__ import annotations


class TlsmirrorError(Exception):
    """Base of all tlsmirror errors. Messages never carry secret material."""
