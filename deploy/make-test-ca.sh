#!/usr/bin/env bash
# Issue a TEST certificate authority and certificates for the district broker, its ingesters and
# compounds, with openssl. For trials and the test suite only: a real district's CA lives offline.
#
#   deploy/make-test-ca.sh OUT_DIR [COMPOUND_ID ...]
#
# Writes OUT_DIR/ca.{key,pem}, OUT_DIR/broker.{key,pem} (CN and SAN 127.0.0.1/localhost),
# OUT_DIR/ingester.{key,pem} (CN "ingester") and OUT_DIR/<compound id>.{key,pem} (CN = compound id,
# which the broker takes as the MQTT username: use_identity_as_username). Set DAYS (default 825)
# for the validity; DAYS=-1 issues certificates that are already expired (for refusal tests).
set -euo pipefail
out=${1:?usage: make-test-ca.sh OUT_DIR [COMPOUND_ID ...]}
shift
days=${DAYS:-825}
mkdir -p "$out"
cd "$out"
umask 077

if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
    -subj "/O=compound-gateway test/CN=compound-gateway test CA" 2>/dev/null
fi

issue() {  # issue NAME CN [SAN]
  local name=$1 cn=$2 san=${3:-}
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/O=compound-gateway test/CN=$cn" 2>/dev/null
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san"; else echo "extendedKeyUsage=clientAuth"; fi
  } > "$ext"
  if [ "$days" -lt 0 ]; then
    # already expired (valid from two days ago until yesterday): openssl ca sets explicit dates
    local db
    db=$(mktemp -d)
    touch "$db/index.txt"
    printf '[ca]\ndefault_ca=test\n[test]\ndatabase=%s/index.txt\nnew_certs_dir=%s\nserial=%s/serial\npolicy=any\ndefault_md=sha256\ncopy_extensions=none\n[any]\ncommonName=supplied\norganizationName=optional\n' "$db" "$db" "$db" > "$db/ca.cnf"
    echo 1000 > "$db/serial"
    openssl ca -batch -notext -config "$db/ca.cnf" -cert ca.pem -keyfile ca.key -in "$name.csr" -out "$name.pem" \
      -extfile "$ext" -startdate "$(date -u -d '2 days ago' +%y%m%d%H%M%SZ)" \
      -enddate "$(date -u -d '1 day ago' +%y%m%d%H%M%SZ)" 2>/dev/null
    rm -rf "$db"
  else
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" \
      -days "$days" -extfile "$ext" 2>/dev/null
  fi
  rm -f "$name.csr" "$ext"
}

[ -f broker.pem ] || issue broker "broker" "IP:127.0.0.1,DNS:localhost"
[ -f ingester.pem ] || issue ingester "ingester"
for compound in "$@"; do
  issue "$compound" "$compound"
done
chmod 0644 ./*.pem
echo "issued in $out: ca.pem broker.pem ingester.pem ${*/%/.pem}"
