# Sourced by the install scripts: Debian packages a script needs and this machine lacks.
#
# apt_install WHO PACKAGE...: as root, installs the packages quietly (no recommends); as anyone else, names the
# command a root user would run and exits 1, so a missing tool is never a silent skip further on.
apt_install() {
  local who=$1
  shift
  if [ "$(id -u)" != 0 ]; then
    echo "$who: $* missing; install as root, then run this again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $*" >&2
    exit 1
  fi
  echo "==> installing $* (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
