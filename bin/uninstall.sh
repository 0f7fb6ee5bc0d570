#!/usr/bin/env bash
# Removes the tlsmirror service, its venv and its user. Keeps config, token and certificates unless --purge.
#   sudo ./bin/uninstall.sh [--purge] [--yes] [--root DIR] [--dry-run]
set -euo pipefail
PROG=$(basename "$0")
PURGE=0 ROOT="" DRY=0 YES=0
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) PURGE=1; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --yes) YES=1; shift ;;  # no prompts (uninstall asks nothing; taken like install.sh's --yes)
    -h|--help) sed -n '2,3p' "$0" | sed 's/^# //'; exit 0 ;;
    *) echo "$PROG: error: unknown option '$1'" >&2; exit 2 ;;
  esac
done
: "$YES"
run() { if [ "$DRY" = 1 ]; then echo "   would run: $*"; else "$@"; fi; }
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then echo "$PROG: error: run as root (sudo)" >&2; exit 1; fi
UNIT="$ROOT/etc/systemd/system/tlsmirror.service"
SYSTEMD=0
if [ -z "$ROOT" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then SYSTEMD=1; fi
if [ "$SYSTEMD" = 1 ]; then run systemctl disable --now tlsmirror 2>/dev/null || true; fi
run rm -f "$UNIT"
if [ "$SYSTEMD" = 1 ]; then run systemctl daemon-reload; fi
run rm -rf "$ROOT/opt/tlsmirror"
if [ -z "$ROOT" ] && id tlsmirror >/dev/null 2>&1; then run userdel tlsmirror; fi
if [ "$PURGE" = 1 ]; then
  run rm -rf "$ROOT/etc/tlsmirror" "$ROOT/var/lib/tlsmirror" "$ROOT/var/log/tlsmirror"
fi
if [ "$DRY" = 1 ]; then
  what="tlsmirror would be removed"
  [ "$PURGE" = 1 ] && what="$what, with its configuration, token, certificates, spool and logs"
  echo "dry run: nothing was changed; $what."
elif [ "$PURGE" = 1 ]; then
  echo "tlsmirror removed, with its configuration, token, certificates, spool and logs"
else
  echo "tlsmirror removed; kept $ROOT/etc/tlsmirror (config, token) and $ROOT/var/lib/tlsmirror (certificates," \
       "spool): --purge removes them"
fi
