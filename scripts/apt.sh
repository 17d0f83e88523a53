# Installing what Kumo's scripts need, from Debian's packages (sourced by guest.sh, test-deps.sh, bench.sh).
# Needs `log` defined by the caller.

# apt-get update, tried three times: on a fresh machine the first one has failed (status 100) and the
# next one worked.
apt_update() {
  local i
  for i in 1 2 3; do
    apt-get update -qq >&2 && return 0
    log "apt-get update failed (try $i of 3)"; sleep $((i * 5))
  done
  return 1
}

# install_missing PACKAGE …: installs them (none given: nothing), with a fresh package list.
install_missing() {
  [ $# -gt 0 ] || return 0
  log "installing $*"
  [ -n "$(find /var/lib/apt/lists -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] || apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# need_tools COMMAND:PACKAGE …: installs the packages whose commands are missing.
need_tools() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  install_missing "${missing[@]}"
}

# need_files FILE:PACKAGE …: installs the packages whose files are missing (libraries with no command).
need_files() {
  local missing=()
  for pair in "$@"; do
    [ -e "${pair%%:*}" ] || missing+=("${pair##*:}")
  done
  install_missing "${missing[@]}"
}

# The web console's libraries, from Debian's packages (kumod serves them; docs/CONSOLE.md).
need_console_libraries() {
  need_files /usr/share/javascript/chart.js/chart.min.js:libjs-chart.js /usr/share/nodejs/xterm/lib/xterm.js:node-xterm \
    /usr/share/javascript/xterm/addons/fit/fit.js:libjs-xterm /usr/share/novnc/core/rfb.js:novnc
}
