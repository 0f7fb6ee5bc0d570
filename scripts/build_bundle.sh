#!/usr/bin/env bash
# Builds dist/tlsmirror-<version>-linux-amd64.tar.gz: installer, wheels of tlsmirror and every dependency
# for CPython 3.10-3.13 (manylinux x86_64), default config, systemd unit, docs.
#   scripts/build_bundle.sh [--pythons "3.10 3.11 3.12 3.13"] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS="3.10 3.11 3.12 3.13" OUT=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --pythons) PYTHONS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--pythons \"3.10 3.11\"] [--out DIR]" >&2; exit 2 ;;
  esac
done
VERSION=$(python3 -c 'import tomllib,sys; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])' 2>/dev/null \
  || sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
NAME=tlsmirror-$VERSION-linux-amd64
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/$NAME
mkdir -p "$STAGE/wheels" "$STAGE/bin" "$STAGE/packaging" "$OUT"
# tlsmirror itself: a pure-Python wheel for every Python, and a mypyc-compiled one for each Python of
# the list found on this machine (pip prefers the compiled wheel where its tag fits).
SRC=$WORK/src  # built from a clean copy of the tree: no stray build products in the wheels
mkdir -p "$SRC"
tar -C . --exclude=./.git --exclude='*.so' --exclude=./build --exclude=./dist --exclude=./bench/data \
  --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$SRC" -xf -
TLSMIRROR_COMPILE='' python3 -m pip wheel --quiet --no-deps --wheel-dir "$STAGE/wheels" "$SRC"
for py in $PYTHONS; do
  exe=$(command -v "python$py" || true)
  if [ -z "$exe" ] && command -v pyenv >/dev/null; then
    exe=$(find "$(pyenv root)/versions" -maxdepth 3 -path "*/versions/$py*/bin/python$py" 2>/dev/null | sort | tail -n 1)
  fi
  if [ -n "$exe" ]; then
    TLSMIRROR_COMPILE=1 "$exe" -m pip wheel --quiet --no-deps --wheel-dir "$STAGE/wheels" "$SRC" \
      || echo "warning: no compiled wheel for Python $py (the pure wheel serves it)" >&2
  else
    echo "note: Python $py not on this machine: its installs use the pure-Python wheel" >&2
  fi
done
REQS=$WORK/requirements.txt
python3 - > "$REQS" <<'PY'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
for py in $PYTHONS; do
  python3 -m pip download --quiet --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest "$STAGE/wheels" -r "$REQS"
done
cp bin/install.sh bin/uninstall.sh "$STAGE/bin/"
cp packaging/tlsmirror.service "$STAGE/packaging/"
cp -r docs README.md "$STAGE/"
if [ -d config ]; then cp -r config "$STAGE/"; fi
tar -C "$WORK" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "$OUT/$NAME.tar.gz ($(du -h "$OUT/$NAME.tar.gz" | cut -f1), $(find "$STAGE/wheels" -name '*.whl' | wc -l) wheels)"
