"""tlsmirror: turn mirrored, TLS-encrypted traffic into API calls."""

__version__ = "0.1.0"

# Modules of the hot path that setup.py compiles: a sample of its COMPILED list (mypyc), and the plain HTTP/1
# head's parser (C, src/tlsmirror/http/_head.c).
_HOT = ("tlsmirror.pipeline", "tlsmirror.http.h1", "tlsmirror.record", "tlsmirror.tcp.reassembly",
        "tlsmirror.http._head")


def build() -> str:
    """How this install was built: ``compiled`` (the hot modules are C extensions, mypyc-compiled or C),
    ``pure Python`` (none is: 3-4x slower) or ``partly compiled``. Found without importing them."""
    from importlib.util import find_spec

    compiled = 0
    for name in _HOT:
        spec = find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is not None and not origin.endswith(".py"):
            compiled += 1
    if compiled == len(_HOT):
        return "compiled"
    return "pure Python" if compiled == 0 else "partly compiled"
