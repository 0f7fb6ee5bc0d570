#!/usr/bin/env bash
# tlsmirror installer: sets up the sensor on a mirroring VM from this bundle.
#   sudo ./bin/install.sh mirror -i IFACE -e ENVIRONMENT -s SERVICE_NAME -t --enable-tls-capture --server-port 8001
# Run with -h for every option. Re-running upgrades in place and keeps config, token and certificates.
set -euo pipefail

PROG=$(basename "$0")
BUNDLE=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
Usage: sudo ./bin/$PROG mirror -i IFACE -e ENV -s SERVICE [options]

Installs tlsmirror as a systemd service that captures mirrored traffic on IFACE.

Required:
  -i, --interface IFACE     capture interface (receives the mirrored packets)
  -e, --environment ENV     deployment.environment of the reported spans
  -s, --service-name NAME   service.name of the reported spans

Options:
  -t, --token               ask for the platform refresh token (no echo; read from standard input
                            when that is not a terminal)
      --token-file FILE     read the token from FILE ('-' = standard input)
      --no-token            install without a token (a collector that needs none)
      --enable-tls-capture  run the key listener (F5 iRule sends session secrets to it)
      --server-port PORT    key listener port (default 8001; must be free)
      --tpa-endpoint URL    platform agent / collector OTLP endpoint (default localhost:4317)
      --workers N           capture worker processes (default: one per core)
      --no-download         install only from this bundle's wheels (no network)
      --yes                 no prompts (fails where an answer would be needed)
      --dry-run             print every step, change nothing
      --root DIR            install into a staging root DIR (no user, no systemctl): used by tests
  -h, --help                this help
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in
  mirror) shift ;;
  -h|--help) usage; exit 0 ;;
  *) echo "$PROG: error: unknown mode '$1' (only 'mirror' is supported)" >&2; usage >&2; exit 2 ;;
esac

IFACE="" ENVIRONMENT="" SERVICE="" ASK_TOKEN=0 TOKEN_FILE="" KEYS=0 PORT=8001 ENDPOINT="localhost:4317"
WORKERS="" NO_DOWNLOAD=0 YES=0 DRY=0 ROOT="" NO_TOKEN=0
while [ $# -gt 0 ]; do
  case "$1" in
    -i|--interface) IFACE=${2:?-i needs an interface}; shift 2 ;;
    -e|--environment) ENVIRONMENT=${2:?-e needs a value}; shift 2 ;;
    -s|--service-name) SERVICE=${2:?-s needs a value}; shift 2 ;;
    -t|--token) ASK_TOKEN=1; shift ;;
    --token-file) TOKEN_FILE=${2:?--token-file needs a file}; shift 2 ;;
    --no-token) NO_TOKEN=1; shift ;;
    --enable-tls-capture) KEYS=1; shift ;;
    --server-port) PORT=${2:?--server-port needs a port}; shift 2 ;;
    --tpa-endpoint) ENDPOINT=${2:?--tpa-endpoint needs a URL}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs a number}; shift 2 ;;
    --no-download) NO_DOWNLOAD=1; shift ;;
    --yes) YES=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$PROG: error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -n "$IFACE" ] || die "-i IFACE is required (the interface that receives the mirrored packets; see 'ip link')"
[ -n "$ENVIRONMENT" ] || die "-e ENVIRONMENT is required (e.g. -e production)"
[ -n "$SERVICE" ] || die "-s SERVICE_NAME is required (e.g. -s payments-api)"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
  die "--server-port must be 1-65535, got '$PORT'"
fi
[ -z "$WORKERS" ] || [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive number, got '$WORKERS'"
[[ "$ENVIRONMENT$SERVICE" =~ ^[A-Za-z0-9._:/-]+$ ]] || die "-e and -s may hold letters, digits and . _ : / - only"
ENDPOINT_RE='^[][A-Za-z0-9.:/_-]+$'
[[ "$ENDPOINT" =~ $ENDPOINT_RE ]] || die "--tpa-endpoint looks wrong: '$ENDPOINT' (host:port or URL)"

PREFIX="$ROOT/opt/tlsmirror"
CONFDIR="$ROOT/etc/tlsmirror"
STATEDIR="$ROOT/var/lib/tlsmirror"
LOGDIR="$ROOT/var/log/tlsmirror"
UNIT="$ROOT/etc/systemd/system/tlsmirror.service"
USER_NAME=tlsmirror

run() {  # run a step, or print it under --dry-run
  if [ "$DRY" = 1 ]; then echo "   would run: $*"; else "$@"; fi
}

# ---------------------------------------------------------------- checks
say "checking the system"
[ "$(uname -s)" = Linux ] || die "tlsmirror runs on Linux only (this is $(uname -s))"
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root: sudo ./bin/$PROG mirror ... (or --root DIR for a staging install)"
fi
PYTHON=${TLSMIRROR_PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "python3 not found: install Python 3.10 or newer (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "Python 3.10 or newer is needed, found $("$PYTHON" -V 2>&1)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "Python's venv module is missing: apt-get install python3-venv"
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ -d "/sys/class/net/$IFACE" ] || die "interface '$IFACE' does not exist (see 'ip -br link'): pass the interface that receives the mirror"
if [ "$KEYS" = 1 ]; then
  if "$PYTHON" - "$PORT" <<'PY' 2>/dev/null; then :; else
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
PY
    if [ -f "$UNIT" ] || systemctl is-active --quiet tlsmirror 2>/dev/null; then
      say "port $PORT is in use by the running tlsmirror (upgrade)"
    else
      die "port $PORT is already in use (see 'ss -ltnp sport = :$PORT'): pick another with --server-port"
    fi
  fi
fi
WHEELS="$BUNDLE/wheels"
if [ "$NO_DOWNLOAD" = 1 ]; then
  ls "$WHEELS"/tlsmirror-*.whl >/dev/null 2>&1 || die "--no-download: no tlsmirror wheel in $WHEELS (is this the bundle?)"
fi

# ---------------------------------------------------------------- token
TOKEN=""
if [ "$TOKEN_FILE" = "-" ]; then
  IFS= read -r TOKEN || true
  TOKEN=${TOKEN%$'\r'}
  [ -n "$TOKEN" ] || die "--token-file -: no token on standard input"
elif [ -n "$TOKEN_FILE" ]; then
  [ -r "$TOKEN_FILE" ] || die "cannot read --token-file $TOKEN_FILE"
  TOKEN=$(tr -d '\r\n' < "$TOKEN_FILE")
  [ -n "$TOKEN" ] || die "--token-file $TOKEN_FILE is empty"
elif [ "$ASK_TOKEN" = 1 ]; then
  if [ -t 0 ] && [ "$YES" = 0 ]; then
    read -r -s -p "Platform refresh token: " TOKEN; echo
  else
    IFS= read -r TOKEN || true  # -t without a terminal: the token comes on standard input
  fi
  TOKEN=${TOKEN%$'\r'}
  [ -n "$TOKEN" ] || die "-t: empty token (type it at the prompt, or pipe it on standard input)"
elif [ "$NO_TOKEN" = 0 ]; then
  die "the platform refresh token is required: -t (prompt or standard input) or --token-file FILE; --no-token to install without one"
fi

# ---------------------------------------------------------------- rollback
CREATED=()
rollback() {
  local rc=$?
  if [ $rc -ne 0 ] && [ "$DRY" = 0 ]; then
    echo "$PROG: install failed (exit $rc); removing what this run created" >&2
    for ((i=${#CREATED[@]}-1; i>=0; i--)); do rm -rf -- "${CREATED[$i]}"; done
  fi
}
trap rollback EXIT
mkd() {  # mkdir -p, remembering the topmost directory this run created
  local d top
  for d in "$@"; do
    if [ ! -d "$d" ]; then
      top=$d
      while [ ! -d "$(dirname "$top")" ]; do top=$(dirname "$top"); done
      run mkdir -p "$d"
      CREATED+=("$top")
    fi
  done
}

# ---------------------------------------------------------------- user
if [ -z "$ROOT" ]; then
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    say "creating system user $USER_NAME"
    run useradd --system --no-create-home --home-dir /var/lib/tlsmirror --shell /usr/sbin/nologin "$USER_NAME"
  fi
  OWNER="$USER_NAME"
else
  OWNER="$(id -un)"
fi

# ---------------------------------------------------------------- venv
say "installing tlsmirror into $PREFIX/venv (Python $PYVER)"
mkd "$PREFIX" "$CONFDIR" "$STATEDIR" "$LOGDIR"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  CREATED+=("$PREFIX/venv")
  run "$PYTHON" -m venv "$PREFIX/venv"
fi
PIP=("$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade)
if [ "$NO_DOWNLOAD" = 1 ]; then
  run "${PIP[@]}" --no-index --find-links "$WHEELS" tlsmirror
elif [ -d "$WHEELS" ]; then
  run "${PIP[@]}" --find-links "$WHEELS" tlsmirror
else
  run "${PIP[@]}" "$BUNDLE"
fi
if [ -d "$BUNDLE/docs" ]; then run cp -r "$BUNDLE/docs" "$PREFIX/"; fi

# ---------------------------------------------------------------- config
CONFIG="$CONFDIR/config.yaml"
if [ -f "$CONFIG" ]; then
  say "keeping existing $CONFIG"
else
  say "writing $CONFIG"
  if [ "$DRY" = 0 ]; then
    umask 027
    {
      echo "# tlsmirror configuration, written by install.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
      echo "# Every key: /opt/tlsmirror/docs/configuration.md. Check with: tlsmirror config check"
      echo "capture:"
      echo "  interfaces: [\"$IFACE\"]"
      if [ -n "$WORKERS" ]; then echo "  workers: $WORKERS"; fi
      echo "keys:"
      echo "  enabled: $([ "$KEYS" = 1 ] && echo true || echo false)"
      echo "  port: $PORT"
      echo "  state_dir: \"/var/lib/tlsmirror\""
      if [ "$KEYS" = 1 ]; then
        echo "  cert: \"/var/lib/tlsmirror/listener.crt\""
        echo "  key: \"/var/lib/tlsmirror/listener.key\""
      fi
      echo "otlp:"
      echo "  endpoint: \"$ENDPOINT\""
      echo "  service_name: \"$SERVICE\""
      echo "  environment: \"$ENVIRONMENT\""
      echo "  spool_dir: \"/var/lib/tlsmirror/spool\""
      if [ -n "$TOKEN" ]; then echo "  token_file: \"/etc/tlsmirror/token\""; fi
    } > "$CONFIG"
    chmod 0640 "$CONFIG"
    umask 022
  fi
  CREATED+=("$CONFIG")
fi
if [ -n "$TOKEN" ]; then
  say "storing the token in $CONFDIR/token (0600)"
  if [ "$DRY" = 0 ]; then
    (umask 077; printf '%s\n' "$TOKEN" > "$CONFDIR/token")
    chmod 0600 "$CONFDIR/token"
    grep -q token_file "$CONFIG" || printf '  token_file: "/etc/tlsmirror/token"\n' >> "$CONFIG"
  fi
fi

# ---------------------------------------------------------------- listener certificate
if [ "$KEYS" = 1 ] && [ ! -f "$STATEDIR/listener.crt" ]; then
  say "creating the key listener's self-signed certificate"
  if [ "$DRY" = 0 ]; then
    (umask 077; openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$(hostname)-tlsmirror" \
      -keyout "$STATEDIR/listener.key" -out "$STATEDIR/listener.crt" >/dev/null 2>&1) \
      || die "openssl could not create the listener certificate (is openssl installed?)"
    chmod 0600 "$STATEDIR/listener.key" "$STATEDIR/listener.crt"
    CREATED+=("$STATEDIR/listener.key" "$STATEDIR/listener.crt")
  fi
fi

if [ "$DRY" = 0 ] && [ -z "$ROOT" ]; then
  chown -R "$OWNER:$OWNER" "$STATEDIR" "$LOGDIR"
  chown "root:$OWNER" "$CONFIG"
  if [ -f "$CONFDIR/token" ]; then chown "$OWNER:$OWNER" "$CONFDIR/token"; fi
fi

say "checking the configuration"
if [ -n "$ROOT" ]; then
  run "$PREFIX/venv/bin/tlsmirror" config check --config "$CONFIG" --root "$ROOT"
else
  run "$PREFIX/venv/bin/tlsmirror" config check --config "$CONFIG"
fi

# ---------------------------------------------------------------- systemd
say "installing the systemd unit $UNIT"
mkd "$(dirname "$UNIT")"
if [ "$DRY" = 0 ]; then
  [ -f "$UNIT" ] || CREATED+=("$UNIT")
  sed -e "s|@USER@|$USER_NAME|g" -e "s|@PREFIX@|/opt/tlsmirror|g" -e "s|@CONFDIR@|/etc/tlsmirror|g" \
      -e "s|@STATEDIR@|/var/lib/tlsmirror|g" -e "s|@LOGDIR@|/var/log/tlsmirror|g" \
      "$BUNDLE/packaging/tlsmirror.service" > "$UNIT"
  chmod 0644 "$UNIT"
fi
if [ -z "$ROOT" ]; then
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl enable tlsmirror
    run systemctl restart tlsmirror
  else
    echo "warning: systemd is not running here; start it by hand: $PREFIX/venv/bin/tlsmirror run --config $CONFIG" >&2
  fi
fi

trap - EXIT
say "done"
cat <<EOF

tlsmirror is installed.
  status:   systemctl status tlsmirror     |  $PREFIX/venv/bin/tlsmirror status
  checks:   $PREFIX/venv/bin/tlsmirror doctor
  config:   $CONFIG (tlsmirror config show)
  logs:     journalctl -u tlsmirror -f
EOF
if [ "$KEYS" = 1 ]; then
  echo "  firewall: allow TCP $PORT from the F5 self IPs to this host (the key listener)"
  echo "  F5 side:  $PREFIX/venv/bin/tlsmirror f5 tmsh --sensor <this host's IP> --port $PORT --virtual <VS name>"
fi
