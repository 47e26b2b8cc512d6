#!/usr/bin/env bash
# Install mlxollama as a per-user background service that starts at login and restarts after a
# crash: a launchd agent (dev.mlxollama.server) on macOS, a systemd user unit on Linux.
#
#   scripts/install-launchd.sh [--dry-run] [--skip-import]
#
#   --dry-run      print every action (commands and file contents) without doing any of it
#   --skip-import  do not import the bundled default models into the store first
#
# Settings are taken from the environment now and written into the service:
#   OLLAMA_HOST (127.0.0.1:11434), MLXOLLAMA_MODELS (~/.mlxollama/models), OLLAMA_KEEP_ALIVE (5m).
# MLXOLLAMA_SERVICE_OS=darwin|linux overrides the detected system; MLXOLLAMA_SERVICE_WAIT is how
# long to wait for the server to answer (60 s). Running it again replaces the service in place.
set -euo pipefail
source "$(dirname "$0")/_service.sh"

HOST_VAL="${OLLAMA_HOST:-127.0.0.1:11434}"
MODELS_VAL="${MLXOLLAMA_MODELS:-$HOME/.mlxollama/models}"
case "$MODELS_VAL" in
  "~"*) MODELS_VAL="$HOME${MODELS_VAL#\~}" ;;
  /*) ;;
  *) MODELS_VAL="$PWD/$MODELS_VAL" ;;  # the service runs elsewhere; a relative path would move
esac
KEEP_VAL="${OLLAMA_KEEP_ALIVE:-5m}"
if [ "$SVC_OS" = darwin ]; then
  PATH_VAL="$ROOT/.venv/bin:/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
else
  PATH_VAL="$ROOT/.venv/bin:/usr/local/bin:/usr/bin:/bin"
fi

render() {  # render darwin|linux TEMPLATE
  (cd "$ROOT" && \
    MLXOLLAMA_SVC_LABEL="$LABEL" MLXOLLAMA_SVC_PYTHON="$VENV_PY" MLXOLLAMA_SVC_ROOT="$ROOT" \
    MLXOLLAMA_SVC_OLLAMA_HOST="$HOST_VAL" MLXOLLAMA_SVC_MODELS="$MODELS_VAL" \
    MLXOLLAMA_SVC_KEEP_ALIVE="$KEEP_VAL" MLXOLLAMA_SVC_PATH="$PATH_VAL" MLXOLLAMA_SVC_LOG_DIR="$LOG_DIR" \
    "$(helper_python)" -m mlxollama.cli.service render "$1" "$2")
}

# 1. the virtual environment the service runs from
if [ ! -x "$VENV_PY" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ source scripts/_setup.sh   # create .venv and install mlxollama into it"
  else
    echo "+ source scripts/_setup.sh"
    ( source "$ROOT/scripts/_setup.sh" )
  fi
fi

# 2. the default models, so the service has something to serve on first start
if [ "$SKIP_IMPORT" = 0 ]; then
  run env MLXOLLAMA_MODELS="$MODELS_VAL" "$VENV_PY" -m mlxollama.cli import-defaults
fi

# 3. the service definition, (re)loaded
if [ "$SVC_OS" = darwin ]; then
  run mkdir -p "$HOME/Library/LaunchAgents" "$LOG_DIR"
  render darwin "$ROOT/launchd/$LABEL.plist" | write_file "$PLIST"
  if [ "$DRY_RUN" = 0 ] && have plutil; then plutil -lint -s "$PLIST"; fi
  if have launchctl; then
    if launchd_loaded; then
      run launchctl bootout "$DOMAIN/$LABEL"
      wait_unloaded
    fi
  elif [ "$DRY_RUN" = 1 ]; then
    maybe "only if already loaded" launchctl bootout "$DOMAIN/$LABEL"
  else
    echo "launchctl not found: is this macOS? (MLXOLLAMA_SERVICE_OS=$SVC_OS)" >&2
    exit 1
  fi
  run launchctl enable "$DOMAIN/$LABEL"
  run launchctl bootstrap "$DOMAIN" "$PLIST"
else
  if [ "$DRY_RUN" = 0 ] && ! have systemctl; then
    echo "systemctl not found: this installer needs systemd on Linux; run 'mlxollama serve' instead" >&2
    exit 1
  fi
  run mkdir -p "$UNIT_DIR"
  render linux "$ROOT/launchd/$UNIT_NAME" | write_file "$UNIT"
  was_active=unknown
  if have systemctl; then
    if systemctl --user is-active --quiet "$UNIT_NAME" 2>/dev/null; then was_active=1; else was_active=0; fi
  fi
  run systemctl --user daemon-reload
  run systemctl --user enable --now "$UNIT_NAME"
  # enable --now leaves a running service alone; restart it so a changed unit takes effect
  if [ "$was_active" = 1 ]; then
    run systemctl --user restart "$UNIT_NAME"
  elif [ "$was_active" = unknown ]; then
    maybe "only if it was already running" systemctl --user restart "$UNIT_NAME"
  fi
fi

# 4. up?
if ! wait_ready; then
  if [ "$SVC_OS" = darwin ]; then
    echo "mlxollama did not answer within ${WAIT}s; see $LOG_DIR/server.log" >&2
  else
    echo "mlxollama did not answer within ${WAIT}s; see: journalctl --user -u $UNIT_NAME" >&2
  fi
  exit 1
fi

URL="$(server_url)"
IS="is running"
if [ "$DRY_RUN" = 1 ]; then IS="would run"; echo; echo "(dry run: nothing was changed)"; fi
echo
if [ "$SVC_OS" = darwin ]; then
  cat <<EOF
mlxollama $IS at $URL as launchd agent $LABEL (starts at login, restarts after a crash).
  logs:     tail -f "$LOG_DIR/server.log"
  status:   launchctl print $DOMAIN/$LABEL
  restart:  launchctl kickstart -k $DOMAIN/$LABEL
  stop:     launchctl bootout $DOMAIN/$LABEL   (it starts again at next login)
  remove:   scripts/uninstall-launchd.sh
EOF
else
  cat <<EOF
mlxollama $IS at $URL as systemd user unit $UNIT_NAME (restarts after a crash).
  logs:     journalctl --user -u $UNIT_NAME -f
  status:   systemctl --user status $UNIT_NAME
  restart:  systemctl --user restart $UNIT_NAME
  stop:     systemctl --user stop $UNIT_NAME
  remove:   scripts/uninstall-launchd.sh
  To keep it running while you are logged out: loginctl enable-linger $(id -un)
EOF
fi
