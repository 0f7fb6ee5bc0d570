#!/usr/bin/env bash
# tlsmirror installer: sets up the sensor on a mirroring VM from this bundle.
#   sudo ./bin/install.sh mirror -i IFACE -e ENVIRONMENT -s SERVICE_NAME -t --enable-tls-capture --server-port 8001
# Run with -h for every option. Re-running upgrades in place: it keeps the token and certificates, keeps
# the config and applies the flags that changed (-i, -e, -s, --tpa-endpoint, --server-port, --workers,
# --enable-tls-capture) to it, or refuses with the reason when it cannot; flags not given keep the
# config's values. docs/install.md has the details.
set -euo pipefail

PROG=$(basename "$0")
BUNDLE=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
Usage: sudo ./bin/$PROG mirror -i IFACE -e ENV -s SERVICE [options]

Installs tlsmirror as a systemd service that captures mirrored traffic on IFACE.
Run again to upgrade: the token, certificate and config are kept, the flags that changed are
applied to the config (or refused with the reason), flags not given keep the config's values.

Required:
  -i, --interface IFACE     capture interface (receives the mirrored packets)
  -e, --environment ENV     deployment.environment of the reported spans
  -s, --service-name NAME   service.name of the reported spans

Options:
  -t, --token               ask for the platform refresh token (no echo; read from standard input
                            when that is not a terminal). Needed on the first install only: a re-run
                            keeps the stored token, and with -t an empty answer keeps it too
      --token-file FILE     read the token from FILE ('-' = standard input)
      --no-token            install without a token (a collector that needs none)
      --enable-tls-capture  run the key listener (F5 iRule sends session secrets to it)
      --server-port PORT    key listener port (default 8001; must be free)
      --tpa-endpoint URL    platform agent / collector OTLP endpoint (default localhost:4317)
      --workers N           capture worker processes (default: one per core)
      --no-download         install only from this bundle's wheels (no network)
      --yes                 no prompts (fails where an answer would be needed)
      --dry-run             print what would be done, change nothing
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
WORKERS="" NO_DOWNLOAD=0 YES=0 DRY=0 ROOT="" NO_TOKEN=0 PORT_GIVEN=0 ENDPOINT_GIVEN=0
while [ $# -gt 0 ]; do
  case "$1" in
    -i|--interface) IFACE=${2:?-i needs an interface}; shift 2 ;;
    -e|--environment) ENVIRONMENT=${2:?-e needs a value}; shift 2 ;;
    -s|--service-name) SERVICE=${2:?-s needs a value}; shift 2 ;;
    -t|--token) ASK_TOKEN=1; shift ;;
    --token-file) TOKEN_FILE=${2:?--token-file needs a file}; shift 2 ;;
    --no-token) NO_TOKEN=1; shift ;;
    --enable-tls-capture) KEYS=1; shift ;;
    --server-port) PORT=${2:?--server-port needs a port}; PORT_GIVEN=1; shift 2 ;;
    --tpa-endpoint) ENDPOINT=${2:?--tpa-endpoint needs a URL}; ENDPOINT_GIVEN=1; shift 2 ;;
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
TOKEN_PATH="$CONFDIR/token"

run() {  # run a step, or print it under --dry-run
  if [ "$DRY" = 1 ]; then echo "   would run: $*"; else "$@"; fi
}
step() {  # step "what it does" : "==> what it does", or "==> would what it does" under --dry-run
  if [ "$DRY" = 1 ]; then say "would $1"; else say "$1"; fi
}

# ---------------------------------------------------------------- an existing config: what changes
# A re-run keeps the config (comments and the operator's own lines too) and applies the flags that
# differ from it, line by line, each printed with its old value; flags not given keep the config's
# values. What it cannot apply (a line it cannot find or edit) it refuses with the reason, before
# anything changes.
CONFIG="$CONFDIR/config.yaml"
# cfg_get SECTION KEY: the value of "  KEY: ..." in the top-level "SECTION:" block, without quotes or
# a trailing comment (a flow list [a, "b"] as [a,b]); exit 1 when there is no such line.
cfg_get() {
  awk -v sec="$1:" -v key="  $2:" '
    function norm(v,  q, i) {
      sub(/^[ \t]+/, "", v)
      q = substr(v, 1, 1)
      if (q == "\"" || q == "\047") { i = index(substr(v, 2), q); return i ? substr(v, 2, i - 1) : v }
      if (q == "[") { i = index(v, "]"); v = i ? substr(v, 1, i) : v; gsub(/["\047 \t]/, "", v); return v }
      sub(/[ \t]+#.*$/, "", v); sub(/[ \t]+$/, "", v); return v
    }
    /^[^ #]/ { insec = ($1 == sec) }
    insec && index($0, key) == 1 { print norm(substr($0, length(key) + 1)); found = 1; exit }
    END { exit found ? 0 : 1 }' "$CONFIG"
}
cfg_has_section() {  # cfg_has_section SECTION: a "SECTION:" line with nothing after it but a comment
  grep -Eq "^$1:[[:space:]]*(#.*)?$" "$CONFIG"
}
cfg_write() {  # cfg_write AWK-PROGRAM ARGS...: rewrite the config in place (mode and owner kept)
  local prog=$1 tmp
  shift
  tmp=$(mktemp "$CONFDIR/.config.XXXXXX")
  awk "$@" "$prog" "$CONFIG" > "$tmp"
  cat "$tmp" > "$CONFIG"
  rm -f "$tmp"
}
# shellcheck disable=SC2016  # awk programs: $1 and $0 are awk's
cfg_set() {  # cfg_set SECTION KEY VALUE: replace that line's value, or add the line under SECTION:
  if cfg_get "$1" "$2" >/dev/null; then
    cfg_write '/^[^ #]/ { insec = ($1 == sec) }
      insec && !done && index($0, key) == 1 { print key " " val; done = 1; next }
      { print }' -v sec="$1:" -v key="  $2:" -v val="$3"
  else
    cfg_write '{ print } !done && $0 ~ ("^" sec "[ \t]*(#.*)?$") { print key " " val; done = 1 }' \
      -v sec="$1:" -v key="  $2:" -v val="$3"
  fi
}
CHANGES=()  # "section|key|value|flag (was ...)" of the flags that differ from the existing config
# plan_change SECTION KEY VALUE SHOWN FLAG [optional]: VALUE as written in the config, SHOWN as
# cfg_get prints it; "optional": a line install.sh writes only for some flags, added when missing.
plan_change() {
  local now
  if now=$(cfg_get "$1" "$2"); then
    [ -n "$now" ] || die "cannot apply $5 to the existing $CONFIG: its $1.$2 is not a one-line value (edit it there by hand, or drop $5)"
    if [ "$now" != "$4" ]; then CHANGES+=("$1|$2|$3|$5 (was $now)"); fi
  elif [ "${6:-}" = optional ] && cfg_has_section "$1"; then
    CHANGES+=("$1|$2|$3|$5 (was not set)")
  else
    die "cannot apply $5 to the existing $CONFIG: it has no $1.$2 line (set it there by hand, or drop $5)"
  fi
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
KEYS_KEPT=0 INSTALLED_PORT=""
if [ -f "$CONFIG" ]; then
  [ -r "$CONFIG" ] || die "cannot read the existing $CONFIG"
  if [ "$(cfg_get keys enabled || true)" = true ]; then
    INSTALLED_PORT=$(cfg_get keys port || true)
    if [ "$KEYS" = 0 ]; then KEYS=1 KEYS_KEPT=1; fi  # the listener stays on: it is not switched off by omission
  fi
  if [ "$PORT_GIVEN" = 0 ] && [ -n "$INSTALLED_PORT" ]; then PORT=$INSTALLED_PORT; fi
  if now=$(cfg_get capture interfaces) && [[ ",${now#[}" == *",$IFACE,"* || ",${now#[}" == *",$IFACE]" ]]; then
    :  # -i names one of the configured interfaces: kept as they are
  else
    plan_change capture interfaces "[\"$IFACE\"]" "[$IFACE]" "-i $IFACE"
  fi
  plan_change otlp environment "\"$ENVIRONMENT\"" "$ENVIRONMENT" "-e $ENVIRONMENT"
  plan_change otlp service_name "\"$SERVICE\"" "$SERVICE" "-s $SERVICE"
  if [ "$ENDPOINT_GIVEN" = 1 ]; then
    plan_change otlp endpoint "\"$ENDPOINT\"" "$ENDPOINT" "--tpa-endpoint $ENDPOINT"
  fi
  if [ -n "$WORKERS" ]; then plan_change capture workers "$WORKERS" "$WORKERS" "--workers $WORKERS" optional; fi
  if [ "$KEYS" = 1 ]; then
    plan_change keys enabled true true "--enable-tls-capture"
    if [ "$PORT_GIVEN" = 1 ]; then plan_change keys port "$PORT" "$PORT" "--server-port $PORT"; fi
    if ! cfg_get keys cert >/dev/null; then  # a certificate of the operator's own is kept
      plan_change keys cert '"/var/lib/tlsmirror/listener.crt"' /var/lib/tlsmirror/listener.crt \
        "--enable-tls-capture" optional
      plan_change keys key '"/var/lib/tlsmirror/listener.key"' /var/lib/tlsmirror/listener.key \
        "--enable-tls-capture" optional
    fi
  elif [ "$PORT_GIVEN" = 1 ]; then
    plan_change keys port "$PORT" "$PORT" "--server-port $PORT"
  fi
  if [ "$NO_TOKEN" = 1 ] && [ -n "$(cfg_get otlp token_file || true)" ]; then
    die "cannot apply --no-token to the existing $CONFIG: it uses the token in $(cfg_get otlp token_file) (remove its otlp.token_file line and the token by hand, or drop --no-token)"
  fi
fi
if [ "$KEYS" = 1 ]; then
  if "$PYTHON" - "$PORT" <<'PY' 2>/dev/null; then :; else
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
PY
    if [ "$PORT" = "$INSTALLED_PORT" ] && { [ -f "$UNIT" ] || systemctl is-active --quiet tlsmirror 2>/dev/null; }; then
      say "port $PORT is in use, by the installed tlsmirror's key listener (upgrade)"
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
HAVE_TOKEN=0
if [ -s "$TOKEN_PATH" ]; then HAVE_TOKEN=1; fi
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
    if [ "$HAVE_TOKEN" = 1 ]; then
      read -r -s -p "Platform refresh token (Enter keeps the stored one): " TOKEN; echo
    else
      read -r -s -p "Platform refresh token: " TOKEN; echo
    fi
  else
    IFS= read -r TOKEN || true  # -t without a terminal: the token comes on standard input
  fi
  TOKEN=${TOKEN%$'\r'}
  [ -n "$TOKEN" ] || [ "$HAVE_TOKEN" = 1 ] || die "-t: empty token (type it at the prompt, or pipe it on standard input)"
elif [ "$NO_TOKEN" = 0 ] && [ "$HAVE_TOKEN" = 0 ] \
     && { [ ! -f "$CONFIG" ] || [ -n "$(cfg_get otlp token_file || true)" ]; }; then
  die "the platform refresh token is required: -t (prompt or standard input) or --token-file FILE; --no-token to install without one"
fi

# ---------------------------------------------------------------- rollback
# A failed run removes what it created and puts back the files it changed (config, token, unit).
CREATED=() SAVED=() SAVEDIR=""
rollback() {
  local rc=$? i
  if [ $rc -ne 0 ] && [ "$DRY" = 0 ]; then
    echo "$PROG: install failed (exit $rc); removing what this run created" >&2
    for ((i=${#CREATED[@]}-1; i>=0; i--)); do rm -rf -- "${CREATED[$i]}"; done
    for ((i=0; i<${#SAVED[@]}; i++)); do
      cat "$SAVEDIR/$i" > "${SAVED[$i]}" && echo "$PROG: restored ${SAVED[$i]}" >&2
    done
  fi
  if [ -n "$SAVEDIR" ]; then rm -rf -- "$SAVEDIR"; fi
}
trap rollback EXIT
save() {  # save FILE: keep a copy of an existing file this run is about to change, for the rollback
  local f
  [ "$DRY" = 0 ] && [ -f "$1" ] || return 0
  for f in "${SAVED[@]}" "${CREATED[@]}"; do [ "$f" != "$1" ] || return 0; done
  if [ -z "$SAVEDIR" ]; then SAVEDIR=$(mktemp -d); fi  # 0700: the token's copy stays private
  cp -p -- "$1" "$SAVEDIR/${#SAVED[@]}"
  SAVED+=("$1")
}
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
    step "create the system user $USER_NAME"
    run useradd --system --no-create-home --home-dir /var/lib/tlsmirror --shell /usr/sbin/nologin "$USER_NAME"
  fi
  OWNER="$USER_NAME"
else
  OWNER="$(id -un)"
fi

# ---------------------------------------------------------------- venv
step "install tlsmirror into $PREFIX/venv (Python $PYVER)"
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
if [ "$DRY" = 0 ]; then  # which wheel pip took: the compiled one where the bundle has it for this Python
  if [ -n "$(find "$PREFIX/venv/lib/python$PYVER/site-packages/tlsmirror" -name '*.so' -print -quit 2>/dev/null)" ]; then
    echo "     the compiled (mypyc) build, for Python $PYVER"
  else
    echo "     the pure-Python build: the bundle has no compiled wheel for Python $PYVER (see its BUNDLE.txt)"
  fi
fi

# ---------------------------------------------------------------- config
if [ "$KEYS_KEPT" = 1 ]; then
  say "keeping the key listener on, on port $PORT (keys.enabled: true in the config)"
fi
UPGRADE=0
if [ -f "$CONFIG" ]; then
  UPGRADE=1
  if [ ${#CHANGES[@]} -eq 0 ]; then
    say "keeping the existing $CONFIG (the flags match it)"
  else
    step "keep the existing $CONFIG and apply the flags that changed:"
    save "$CONFIG"
    for c in "${CHANGES[@]}"; do
      IFS='|' read -r c_sec c_key c_val c_what <<< "$c"
      echo "     $c_sec.$c_key: $c_val  <- $c_what"
      if [ "$DRY" = 0 ]; then cfg_set "$c_sec" "$c_key" "$c_val"; fi
    done
  fi
else
  step "write $CONFIG"
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
  if [ "$HAVE_TOKEN" = 1 ]; then step "replace the token in $TOKEN_PATH (0600)"
  else step "store the token in $TOKEN_PATH (0600)"; fi
  if [ "$DRY" = 0 ]; then
    if [ "$HAVE_TOKEN" = 1 ]; then save "$TOKEN_PATH"; else CREATED+=("$TOKEN_PATH"); fi
    (umask 077; printf '%s\n' "$TOKEN" > "$TOKEN_PATH")
    chmod 0600 "$TOKEN_PATH"
  fi
  if [ -f "$CONFIG" ] && ! cfg_get otlp token_file >/dev/null; then  # a config first written with --no-token
    cfg_has_section otlp || die "cannot add otlp.token_file to $CONFIG: it has no otlp: section (add it by hand)"
    echo "     otlp.token_file: \"/etc/tlsmirror/token\"  <- the token (was not set)"
    if [ "$DRY" = 0 ]; then save "$CONFIG"; cfg_set otlp token_file '"/etc/tlsmirror/token"'; fi
  fi
elif [ "$HAVE_TOKEN" = 1 ]; then
  say "keeping the token in $TOKEN_PATH"
elif [ -f "$CONFIG" ] && [ "$NO_TOKEN" = 0 ]; then
  say "keeping the config without a token (it has no otlp.token_file)"
fi

# ---------------------------------------------------------------- listener certificate
# Self-signed, with this host's names and addresses (every interface) as subject alternative names,
# so that senders verify it by IP address as well as by name. A config naming another certificate
# (the operator's own) keeps it.
CERT="$STATEDIR/listener.crt" CERT_NAMES=""
if [ "$KEYS" = 1 ] && [ -f "$CONFIG" ]; then
  c_cert=$(cfg_get keys cert || true)
  if [ -n "$c_cert" ] && [ "$c_cert" != /var/lib/tlsmirror/listener.crt ]; then CERT="$ROOT$c_cert"; fi
fi
cert_names() {  # the subject alternative names of $CERT, as "DNS:name IP:address ..."
  "$PREFIX/venv/bin/python" - "$CERT" <<'PY'
import sys
from cryptography import x509
cert = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
try:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
except x509.ExtensionNotFound:
    sys.exit(0)
print(" ".join([f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
               + [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]))
PY
}
if [ "$KEYS" = 1 ] && [ "$CERT" = "$STATEDIR/listener.crt" ] && [ ! -f "$CERT" ]; then
  step "create the key listener's self-signed certificate $CERT (this host's names and addresses)"
  if [ "$DRY" = 0 ]; then
    CREATED+=("$STATEDIR/listener.key" "$CERT")
    CERT_NAMES=$("$PREFIX/venv/bin/python" -m tlsmirror.shell.keylistener.certs "$CERT" "$STATEDIR/listener.key") \
      || die "could not create the listener certificate in $STATEDIR"
    echo "     names: $CERT_NAMES"
  fi
elif [ "$KEYS" = 1 ]; then
  say "keeping the key listener's certificate $CERT"
  if [ "$DRY" = 0 ] && [ -r "$CERT" ]; then
    CERT_NAMES=$(cert_names 2>/dev/null || true)
    if [[ " $CERT_NAMES" != *" IP:"* ]] && [ "$CERT" = "$STATEDIR/listener.crt" ]; then
      echo "warning: $CERT names no IP address (an older install.sh made it), so senders that verify it by" \
           "address fail; to replace it: remove it and listener.key, re-run $PROG, copy the new one to the BIG-IP" >&2
    fi
  fi
fi

if [ "$DRY" = 0 ] && [ -z "$ROOT" ]; then
  chown -R "$OWNER:$OWNER" "$STATEDIR" "$LOGDIR"
  chown "root:$OWNER" "$CONFIG"
  if [ -f "$CONFDIR/token" ]; then chown "$OWNER:$OWNER" "$CONFDIR/token"; fi
fi

step "check the configuration"
if [ -n "$ROOT" ]; then
  run "$PREFIX/venv/bin/tlsmirror" config check --config "$CONFIG" --root "$ROOT"
else
  run "$PREFIX/venv/bin/tlsmirror" config check --config "$CONFIG"
fi

# ---------------------------------------------------------------- systemd
step "install the systemd unit $UNIT"
mkd "$(dirname "$UNIT")"
if [ "$DRY" = 0 ]; then
  if [ -f "$UNIT" ]; then save "$UNIT"; else CREATED+=("$UNIT"); fi
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
if [ "$DRY" = 1 ]; then
  echo
  if [ "$UPGRADE" = 1 ]; then what=upgraded; else what=installed; fi
  echo "dry run: nothing was changed; tlsmirror would be $what as above."
  exit 0
fi
say "done"
cat <<EOF

tlsmirror is installed.
  status:   systemctl status tlsmirror     |  $PREFIX/venv/bin/tlsmirror status
  checks:   $PREFIX/venv/bin/tlsmirror doctor
  config:   $CONFIG (tlsmirror config show)
  logs:     journalctl -u tlsmirror -f
EOF
if [ "$KEYS_KEPT" = 1 ]; then
  echo "  keys:     the key listener stays on (keys.enabled: true in $CONFIG; set it to false there to stop it)"
fi
if [ "$KEYS" = 1 ]; then
  # The certificate's addresses that are not loopback: the BIG-IP reaches the sensor on one of them.
  ADDRS=()
  for n in $CERT_NAMES; do
    case "$n" in IP:127.*|IP:::1) ;; IP:*) ADDRS+=("${n#IP:}") ;; esac
  done
  echo "  firewall: allow TCP $PORT from the F5 self IPs to this host (the key listener)"
  echo "  F5 side:  copy the listener certificate to the BIG-IP (its server-ssl profile verifies the sensor"
  echo "            with it), then generate the BIG-IP script here and run it there (docs/f5.md):"
  echo "    scp $CERT admin@<bigip>:/var/tmp/tlsmirror-listener.pem"
  echo "    $PREFIX/venv/bin/tlsmirror f5 tmsh --sensor ${ADDRS[0]:-<this host IP>} --port $PORT --virtual <VS name> --sensor-cert-file /var/tmp/tlsmirror-listener.pem > tlsmirror-f5.sh"
  if [ ${#ADDRS[@]} -gt 1 ]; then
    echo "            (--sensor: the address the BIG-IP reaches; the certificate also names ${ADDRS[*]:1})"
  fi
fi
