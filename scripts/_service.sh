# Sourced by scripts/install-launchd.sh and scripts/uninstall-launchd.sh: options, paths, helpers.
# Written for bash 3.2, the /bin/bash macOS ships.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
SKIP_IMPORT=0
WAIT="${MLXOLLAMA_SERVICE_WAIT:-60}"

for arg in "$@"; do
  case "$arg" in
    -n|--dry-run) DRY_RUN=1 ;;
    --skip-import) SKIP_IMPORT=1 ;;
    -h|--help) sed -n '2,/^set -/p' "$0" | sed -e '/^set -/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

SVC_OS="$(printf '%s' "${MLXOLLAMA_SERVICE_OS:-$(uname -s)}" | tr '[:upper:]' '[:lower:]')"
case "$SVC_OS" in
  darwin|linux) ;;
  *) echo "no background service support for '$SVC_OS'; run 'mlxollama serve' instead" >&2; exit 1 ;;
esac

LABEL="dev.mlxollama.server"
DOMAIN="gui/$(id -u)"
PLIST="$HOME/Library/LaunchAgents/$LABEL.plist"
LOG_DIR="$HOME/Library/Logs/mlxollama"
UNIT_NAME="mlxollama.service"
UNIT_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
UNIT="$UNIT_DIR/$UNIT_NAME"
VENV_PY="$ROOT/.venv/bin/python"

have() { command -v "$1" >/dev/null 2>&1; }

# Any Python 3 will do for the helpers below; the venv's once it exists.
helper_python() {
  if [ -x "$VENV_PY" ]; then echo "$VENV_PY"; else command -v python3; fi
}

# Print a command the way it would be typed, then run it unless --dry-run.
run() {
  local shown="" a
  for a in "$@"; do shown="$shown $(printf '%q' "$a")"; done
  echo "+${shown}"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# Print a command that runs only in some states we cannot check here (dry run on another OS).
maybe() {
  local note="$1" shown="" a
  shift
  for a in "$@"; do shown="$shown $(printf '%q' "$a")"; done
  echo "+${shown}   # ${note}"
}

# write_file DEST < content: atomically, or only shown with --dry-run.
write_file() {
  local dest="$1" content
  content="$(cat)"
  echo "+ write $dest:"
  printf '%s\n' "$content" | sed 's/^/    /'
  if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$(dirname "$dest")"
    printf '%s\n' "$content" > "$dest.tmp.$$"
    mv "$dest.tmp.$$" "$dest"
  fi
}

server_url() {
  (cd "$ROOT" && OLLAMA_HOST="${OLLAMA_HOST:-}" "$(helper_python)" -c \
    'from mlxollama.cli.client import server_url; print(server_url())')
}

# Poll GET / until the server answers 200 (proxies bypassed: this is a local check).
wait_ready() {
  local url
  url="$(server_url)"
  echo "+ wait until GET $url/ answers (up to ${WAIT}s)"
  [ "$DRY_RUN" = 1 ] && return 0
  "$(helper_python)" - "$url" "$WAIT" <<'PY'
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.time() + limit
while True:
    try:
        with opener.open(url + "/", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    if time.time() >= deadline:
        sys.exit(1)
    time.sleep(0.5)
PY
}

launchd_loaded() { launchctl print "$DOMAIN/$LABEL" >/dev/null 2>&1; }

# bootout returns before the old process is gone; bootstrapping too early fails with error 5.
wait_unloaded() {
  [ "$DRY_RUN" = 1 ] && return 0
  local i=0
  while launchd_loaded && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
}
