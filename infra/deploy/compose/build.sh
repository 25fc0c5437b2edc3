#!/usr/bin/env bash
# Builds the two images of the compose stack that are not jetfn's own (infra/images.sh builds those):
#
#   jetfn/maildev:2.2.1    the mail catcher (npm maildev, infra/deploy/compose/maildev/package-lock.json)
#   jetfn/phoenix:20.26.1  the trace backend (PyPI arize-phoenix, infra/deploy/compose/phoenix/requirements.txt)
#
# No container registry is reachable here, so neither starts from a base image: each is `FROM scratch` with a
# root filesystem staged under target/compose-images/<name>/rootfs: this machine's own interpreter (Node.js 20 for
# maildev, CPython 3.11 for Phoenix), exactly the shared libraries `ldd` names for it and for every native module,
# the glibc loader, and the packages installed from their registry with the committed lock. That takes seconds
# beyond the package installs, where a debootstrap base would first download and unpack a Debian system.
# The staged directory is the build context, so `docker build -f infra/deploy/compose/maildev.Containerfile
# target/compose-images/maildev` builds the same image.
#
# Warm (the lock files, the Containerfiles, this script and the interpreter unchanged) it takes a second: each image
# carries the hash of its inputs as a label, and one whose label matches is kept.
#
#   bash infra/deploy/compose/build.sh             both
#   bash infra/deploy/compose/build.sh maildev     one of them
set -euo pipefail
cd "$(dirname "$0")/../../.."

MAILDEV_VERSION=2.2.1
PHOENIX_VERSION=20.26.1
HERE=infra/deploy/compose
STAGE=target/compose-images
export CONTAINERS_CONF="$PWD/infra/containers/containers.conf"

wanted=("$@")
[ "${#wanted[@]}" -gt 0 ] || wanted=(maildev phoenix)

fail() {
  echo "infra/deploy/compose/build.sh: $*" >&2
  exit 1
}

bash infra/install-podman.sh

# Copies `file` into `root` at the same path, following symbolic links.
place() {
  local root=$1 file=$2
  [ -e "$root$file" ] && return 0
  mkdir -p "$root$(dirname "$file")"
  cp -L "$file" "$root$file"
}

# Every shared library the ELF files under `root` (or given) need, from this machine, at the paths ldd resolves;
# libraries a package ships itself (a wheel's .libs directory) are already inside `root` and resolve there.
libraries() {
  local root=$1
  shift
  local missing
  missing=$(for file in "$@"; do ldd "$file" 2>/dev/null | { grep "not found" || true; } | sed "s|^|$file: |"; done)
  [ -z "$missing" ] || fail "a native module needs a library this machine does not have:"$'\n'"$missing"
  for file in "$@"; do
    ldd "$file" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
  done | sort -u | while read -r lib; do
    case "$lib" in "$PWD/$root"/* | "$root"/*) continue ;; esac
    place "$root" "$lib"
  done
}

# A user database naming nobody, a writable /tmp, the CA bundle.
base_files() {
  local root=$1
  mkdir -p "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# The hash of what goes into an image; the image keeps it as the label jetfn.inputs.
inputs() {
  cat "$0" "$@" | sha256sum | cut -c1-16
}

# Builds `image` from `context` unless an image with the same inputs label exists.
build() {
  local name=$1 image=$2 hash=$3
  local context=$STAGE/$name
  echo "==> podman build $image"
  cp "$HERE/$name.Containerfile" "$context/Containerfile"
  podman build --quiet --label "jetfn.inputs=$hash" -f "$context/Containerfile" -t "$image" "$context" >/dev/null
  bytes=$(podman image inspect --format '{{.Size}}' "$image")
  echo "    $image: $(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1048576 }') MiB"
}

current() {
  local image=$1 hash=$2
  [ "$(podman image inspect --format '{{ index .Labels "jetfn.inputs" }}' "$image" 2>/dev/null)" = "$hash" ]
}

maildev() {
  local image=jetfn/maildev:$MAILDEV_VERSION
  command -v node >/dev/null && command -v npm >/dev/null ||
    fail "Node.js 20 or newer and npm are needed for the maildev image (the machine's own; Debian: apt-get install nodejs npm)"
  local node
  node=$(command -v node)
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 18 ] || fail "maildev $MAILDEV_VERSION needs Node.js 18 or newer, this machine has $(node --version)"
  local hash
  hash=$(inputs "$HERE/maildev.Containerfile" "$HERE/maildev/package.json" "$HERE/maildev/package-lock.json" \
    <(node --version) "$node")
  if current "$image" "$hash"; then
    echo "==> $image is current"
    return
  fi
  local root=$STAGE/maildev/rootfs
  rm -rf "$STAGE/maildev"
  mkdir -p "$root/opt/maildev" "$root/usr/local/bin"
  base_files "$root"
  cp "$HERE/maildev/package.json" "$HERE/maildev/package-lock.json" "$root/opt/maildev/"
  echo "==> npm ci maildev@$MAILDEV_VERSION"
  (cd "$root/opt/maildev" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
  cp -L "$node" "$root/usr/local/bin/node"
  # Node itself and any native addon a package built.
  mapfile -t elves < <(find "$root" -type f \( -name '*.node' -o -path '*/usr/local/bin/node' \))
  libraries "$root" "${elves[@]}"
  build maildev "$image" "$hash"
}

phoenix() {
  local image=jetfn/phoenix:$PHOENIX_VERSION
  local python=${JETFN_PHOENIX_PYTHON:-python3}
  command -v "$python" >/dev/null || fail "CPython 3.11 is needed for the Phoenix image ($python not found)"
  local version prefix
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$version" = 3.11 ] ||
    fail "the Phoenix image is pinned for CPython 3.11 (requirements.txt); $python is $version (set JETFN_PHOENIX_PYTHON)"
  prefix=$("$python" -c 'import sys; print(sys.base_prefix)')
  local hash
  hash=$(inputs "$HERE/phoenix.Containerfile" "$HERE/phoenix/requirements.txt" <("$python" -VV) \
    "$prefix/bin/python3.11")
  if current "$image" "$hash"; then
    echo "==> $image is current"
    return
  fi
  local root=$STAGE/phoenix/rootfs
  # The install (a minute or two) is kept while the lock and the interpreter are the same; only the image is redone.
  local staged
  staged=$(cat "$HERE/phoenix/requirements.txt" <("$python" -VV) | sha256sum | cut -c1-16)
  if [ "$(cat "$STAGE/phoenix/staged" 2>/dev/null)" = "$staged" ]; then
    build phoenix "$image" "$hash"
    return
  fi
  rm -rf "$STAGE/phoenix"
  # home/ (empty) becomes /phoenix, the one directory nobody may write.
  mkdir -p "$root$prefix/bin" "$root$prefix/lib" "$root/usr/local/bin" "$STAGE/phoenix/home"
  base_files "$root"
  # The interpreter and its standard library at the path it was built for (its RUNPATH names it), without the
  # host's site-packages and what a server never imports.
  cp -L "$prefix/bin/python3.11" "$root$prefix/bin/"
  ln -s "$prefix/bin/python3.11" "$root/usr/local/bin/python3"
  tar -C "$prefix/lib" --exclude=python3.11/site-packages --exclude=python3.11/test \
    --exclude=python3.11/idlelib --exclude=python3.11/tkinter --exclude=python3.11/turtledemo \
    --exclude=python3.11/ensurepip --exclude=python3.11/lib2to3 --exclude=python3.11/config-3.11-x86_64-linux-gnu \
    -cf - python3.11 $(cd "$prefix/lib" && ls libpython3.11.so* 2>/dev/null) | tar -C "$root$prefix/lib" -xf -
  echo "==> pip install arize-phoenix==$PHOENIX_VERSION (and its pinned dependencies)"
  "$python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore --no-deps --only-binary :all: \
    --target "$root$prefix/lib/python3.11/site-packages" -r "$HERE/phoenix/requirements.txt"
  rm -rf "$root$prefix/lib/python3.11/site-packages/bin"
  mapfile -t elves < <(find "$root" -type f \( -name '*.so' -o -name '*.so.*' -o -name python3.11 \))
  libraries "$root" "${elves[@]}"
  echo "$staged" >"$STAGE/phoenix/staged"
  build phoenix "$image" "$hash"
}

for name in "${wanted[@]}"; do
  case "$name" in
    maildev) maildev ;;
    phoenix) phoenix ;;
    *) fail "no image named $name (known: maildev phoenix)" ;;
  esac
done
