#!/usr/bin/env bash
# Stop and remove the mlxollama background service that scripts/install-launchd.sh installed
# (the launchd agent dev.mlxollama.server on macOS, the systemd user unit on Linux).
# Models and logs are kept. Safe to run when nothing is installed.
#
#   scripts/uninstall-launchd.sh [--dry-run]
#
#   --dry-run   print every action without doing any of it
# MLXOLLAMA_SERVICE_OS=darwin|linux overrides the detected system.
set -euo pipefail
source "$(dirname "$0")/_service.sh"

did=0
if [ "$SVC_OS" = darwin ]; then
  if have launchctl; then
    if launchd_loaded; then
      run launchctl bootout "$DOMAIN/$LABEL"
      wait_unloaded
      did=1
    fi
  elif [ "$DRY_RUN" = 1 ]; then
    maybe "only if loaded" launchctl bootout "$DOMAIN/$LABEL"
  fi
  if [ -e "$PLIST" ]; then
    run rm -f "$PLIST"
    did=1
  fi
  kept="logs in $LOG_DIR"
else
  if [ -e "$UNIT" ]; then
    if have systemctl; then
      run systemctl --user disable --now "$UNIT_NAME" || echo "warning: could not stop $UNIT_NAME" >&2
    elif [ "$DRY_RUN" = 1 ]; then
      maybe "needs systemd" systemctl --user disable --now "$UNIT_NAME"
    fi
    run rm -f "$UNIT"
    if have systemctl || [ "$DRY_RUN" = 1 ]; then run systemctl --user daemon-reload; fi
    did=1
  fi
  kept="logs in the journal (journalctl --user -u $UNIT_NAME)"
fi

if [ "$did" = 0 ]; then
  echo "mlxollama service is not installed; nothing to do."
elif [ "$DRY_RUN" = 1 ]; then
  echo "(dry run: nothing was changed)"
else
  echo "mlxollama service removed; models and $kept were kept."
fi
