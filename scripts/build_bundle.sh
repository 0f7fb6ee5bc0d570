#!/usr/bin/env bash
# Builds dist/tlsmirror-<version>-linux-amd64.tar.gz: installer, wheels of tlsmirror and every dependency
# for CPython 3.10-3.13 (manylinux x86_64), default config, systemd unit, docs. tlsmirror itself comes as
# a pure-Python wheel for every Python and a mypyc-compiled one for each Python of the list that runs on
# this machine; BUNDLE.txt in the bundle says which Pythons have the compiled wheel.
#   scripts/build_bundle.sh [--pythons "3.10 3.11 3.12 3.13"] [--out DIR] [--all-compiled|--no-compile] [--probe]
#     --all-compiled  fail unless every Python of the list got its compiled wheel (release builds)
#     --no-compile    the pure-Python wheel only (a quick bundle; no C compiler needed)
#     --probe         only say which Python would build each compiled wheel, build nothing
set -euo pipefail
PYTHONS="3.10 3.11 3.12 3.13" OUT=dist ALL_COMPILED=0 PROBE=0 COMPILE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --pythons) PYTHONS=${2:?--pythons needs a list}; shift 2 ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --all-compiled) ALL_COMPILED=1; shift ;;
    --probe) PROBE=1; shift ;;
    --no-compile) COMPILE=0; shift ;;
    *) echo "usage: $0 [--pythons \"3.10 3.11\"] [--out DIR] [--all-compiled|--no-compile] [--probe]" >&2; exit 2 ;;
  esac
done

# find_python X.Y: the first pythonX.Y that runs and is X.Y, of every one on PATH and then pyenv's
# installed versions. A pyenv shim is on PATH for every version pyenv knows, but fails (exit 127) for
# those not selected: each candidate is run, not just found, and each that fails is named. Uses shell
# builtins only.
find_python() {
  local py=$1 exe rc dir seen=" " IFS
  local -a cands=()
  IFS=:
  for dir in $PATH; do
    if [ -n "$dir" ] && [ -x "$dir/python$py" ]; then cands+=("$dir/python$py"); fi
  done
  IFS=$' \t\n'
  for dir in "${PYENV_ROOT:-${HOME:-/nonexistent}/.pyenv}/versions/$py"*/bin; do
    if [ -x "$dir/python$py" ]; then cands+=("$dir/python$py"); fi
  done
  for exe in "${cands[@]}"; do
    case "$seen" in *" $exe "*) continue ;; esac
    seen="$seen$exe "
    rc=0
    "$exe" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$py' else 3)" >/dev/null 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then echo "$exe"; return 0; fi
    if [ "$rc" = 3 ]; then
      echo "note: $exe is not Python $py: skipped" >&2
    else
      echo "note: $exe does not run (exit $rc): skipped" >&2
    fi
  done
  return 1
}
if [ "$COMPILE" = 0 ] && [ "$ALL_COMPILED" = 1 ]; then
  echo "error: --no-compile and --all-compiled contradict each other" >&2; exit 2
fi
declare -A EXE=()
for py in $PYTHONS; do
  if [ "$COMPILE" = 0 ]; then continue; fi
  if exe=$(find_python "$py"); then
    EXE[$py]=$exe
    echo "Python $py: $exe runs: it builds the compiled wheel" >&2
  else
    echo "note: no Python $py runs on this machine: its installs use the pure-Python wheel" >&2
  fi
done
if [ "$PROBE" = 1 ]; then exit 0; fi

cd "$(dirname "$0")/.."
VERSION=$(python3 -c 'import tomllib,sys; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])' 2>/dev/null \
  || sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
NAME=tlsmirror-$VERSION-linux-amd64
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/$NAME
mkdir -p "$STAGE/wheels" "$STAGE/bin" "$STAGE/packaging" "$OUT"
# tlsmirror itself: a pure-Python wheel for every Python, and a mypyc-compiled one for each Python of
# the list that runs here (pip prefers the compiled wheel where its tag fits).
SRC=$WORK/src  # built from a clean copy of the tree: no stray build products in the wheels
mkdir -p "$SRC"
tar -C . --exclude=./.git --exclude='*.so' --exclude=./build --exclude=./dist --exclude=./bench/data \
  --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$SRC" -xf -
TLSMIRROR_COMPILE='' python3 -m pip wheel --quiet --no-deps --wheel-dir "$STAGE/wheels" "$SRC"
COMPILED=() PURE=()
for py in $PYTHONS; do
  tag=cp${py/./}
  if [ "$COMPILE" = 0 ]; then
    PURE+=("$py")
  elif [ -n "${EXE[$py]:-}" ] && TLSMIRROR_COMPILE=1 "${EXE[$py]}" -m pip wheel --quiet --no-deps \
       --wheel-dir "$STAGE/wheels" "$SRC" && compgen -G "$STAGE/wheels/tlsmirror-*-$tag-$tag-*.whl" >/dev/null; then
    COMPILED+=("$py")
  else
    if [ -n "${EXE[$py]:-}" ]; then
      echo "warning: ${EXE[$py]} could not build the compiled wheel: Python $py installs use the pure-Python wheel" >&2
    fi
    PURE+=("$py")
  fi
done
if [ "$ALL_COMPILED" = 1 ] && [ ${#PURE[@]} -gt 0 ]; then
  echo "error: --all-compiled: no compiled wheel for Python ${PURE[*]} (see the notes above)" >&2
  exit 1
fi
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
{
  echo "tlsmirror $VERSION bundle for Linux x86_64, built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "pythons: $PYTHONS"
  echo "compiled: ${COMPILED[*]:-none}"
  echo "pure-only: ${PURE[*]:-none}"
  echo
  echo "Wheels of tlsmirror and of every dependency for CPython $PYTHONS. On the Pythons listed"
  echo "as compiled, install.sh installs tlsmirror's mypyc-compiled wheel; on pure-only ones, the"
  echo "pure-Python wheel (same behaviour, slower per packet)."
} > "$STAGE/BUNDLE.txt"
tar -C "$WORK" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "$OUT/$NAME.tar.gz ($(du -h "$OUT/$NAME.tar.gz" | cut -f1), $(find "$STAGE/wheels" -name '*.whl' | wc -l) wheels;" \
     "compiled wheel for Python: ${COMPILED[*]:-none}; pure-Python wheel only: ${PURE[*]:-none})"
