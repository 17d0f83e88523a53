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

need_tools() {
  local missing=()
  for pair in "$@"; do
    local tool=${pair%%:*} pkg=${pair##*:}
    command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    [ -n "$(find /var/lib/apt/lists -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] || apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}
