#!/usr/bin/env bash
# Makes what compose.yaml mounts and that must not be committed, into ${JETFN_COMPOSE_DIR:-.jetfn/compose}
# (gitignored), once: a run finds them there and changes nothing.
#
#   tls/ca.pem, tls/ca-key.pem     a CA for this stack (EC P-256, 825 days)
#   tls/nats.pem, tls/nats-key.pem the NATS nodes' certificate, for clients and cluster routes: nats-1, nats-2,
#                                  nats-3, localhost and 127.0.0.1 (the host reaches the nodes on published ports)
#   nats.env                       every user's password as the servers read them ($WELCOME_PASSWORD, ...; the
#                                  variables infra/deploy/nats-permissions.conf names)
#   secrets/<user>                 each user's password alone, mounted into its container (NATS_PASSWORD_FILE)
#
# The passwords are random (openssl rand). The key and password files are readable by every user of this machine
# (0644) inside a directory only root may enter (0700): the containers run as nobody and read them through bind
# mounts. Delete the directory to make new ones. Needs openssl (apt-get install openssl).
set -euo pipefail
cd "$(dirname "$0")/../../.."

DIR="${JETFN_COMPOSE_DIR:-.jetfn/compose}"
PERMISSIONS=infra/deploy/nats-permissions.conf

if ! command -v openssl >/dev/null; then
  echo "infra/deploy/compose/secrets.sh: openssl is missing: apt-get install openssl" >&2
  exit 1
fi

mkdir -p "$DIR/tls" "$DIR/secrets"
chmod 0700 "$DIR"

if [ ! -s "$DIR/tls/nats.pem" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=jetfn compose CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" 2>/dev/null
  # serverAuth for clients, clientAuth too: a route connects as a client of the other node and shows the same
  # certificate (the cluster block verifies it).
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1" >"$tmp/nats.ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=nats" \
    -keyout "$tmp/nats-key.pem" -out "$tmp/nats.csr" 2>/dev/null
  openssl x509 -req -in "$tmp/nats.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" -CAcreateserial \
    -days 825 -extfile "$tmp/nats.ext" -out "$tmp/nats.pem" 2>/dev/null
  cp "$tmp/ca.pem" "$tmp/ca-key.pem" "$tmp/nats-key.pem" "$tmp/nats.pem" "$DIR/tls/"
  chmod 0644 "$DIR/tls/"*.pem
  chmod 0600 "$DIR/tls/ca-key.pem"
  echo "==> made the stack's CA and the NATS certificate in $DIR/tls"
fi

# One password per user the permissions file names; a user added later gets one on the next run.
made=0
for variable in $(grep -o 'password: \$[A-Z_]*' "$PERMISSIONS" | sed 's/.*\$//' | sort -u); do
  user=$(echo "${variable%_PASSWORD}" | tr 'A-Z_' 'a-z-')
  if [ ! -s "$DIR/secrets/$user" ]; then
    openssl rand -hex 24 | tr -d '\n' >"$DIR/secrets/$user"
    chmod 0644 "$DIR/secrets/$user"
    made=$((made + 1))
  fi
done
{
  for file in "$DIR"/secrets/*; do
    user=$(basename "$file")
    echo "$(echo "$user" | tr 'a-z-' 'A-Z_')_PASSWORD=$(cat "$file")"
  done
} >"$DIR/nats.env.tmp"
chmod 0644 "$DIR/nats.env.tmp"
mv "$DIR/nats.env.tmp" "$DIR/nats.env"
if [ "$made" -gt 0 ]; then
  echo "==> made $made NATS passwords in $DIR/secrets (and $DIR/nats.env for the servers)"
fi
