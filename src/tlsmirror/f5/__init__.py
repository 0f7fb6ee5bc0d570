"""F5 BIG-IP configuration text: the key export iRule and the tmsh commands around it.

Pure text generation (no I/O): :func:`render_irule` and :func:`render_tmsh`. Object names are
checked so that nothing an operator types can break the Tcl or the shell script; a bad name raises
:class:`F5ConfigError`.
"""

from __future__ import annotations

from .errors import F5ConfigError
from .irule import IruleOptions, render_irule
from .names import full_path
from .tmsh import TmshOptions, render_tmsh

__all__ = ["F5ConfigError", "IruleOptions", "TmshOptions", "full_path", "render_irule", "render_tmsh"]
