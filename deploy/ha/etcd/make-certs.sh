#!/usr/bin/env bash
# Certificates for deploy/ha/etcd with openssl: a CA, one certificate the members use to serve
# clients and each other (peer TLS, client-certificate auth both ways), and ipam-apiserver's
# client certificate; plus the --etcd-servers value for the 3 members.
#
# Usage: deploy/ha/etcd/make-certs.sh [DIR]   (default DIR: ./etcd-certs; existing files are kept)
#   IPAM_NS overrides the namespace (ipam-system), ETCD_MEMBERS the member count (3).
# Then:
#   kubectl -n ipam-system create secret generic etcd-tls \
#     --from-file=ca.crt=DIR/ca.crt --from-file=tls.crt=DIR/member.crt --from-file=tls.key=DIR/member.key
#   kubectl -n ipam-system create secret generic ipam-etcd-client --from-file=servers=DIR/servers \
#     --from-file=ca.crt=DIR/ca.crt --from-file=tls.crt=DIR/client.crt --from-file=tls.key=DIR/client.key
#   kubectl apply -k deploy/ha/etcd/
set -euo pipefail
DIR=${1:-./etcd-certs}
NS=${IPAM_NS:-ipam-system}
DAYS=${IPAM_CERT_DAYS:-365}
MEMBERS=${ETCD_MEMBERS:-3}
mkdir -p "$DIR"
cd "$DIR"
umask 077

if [[ ! -f ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=ipam-etcd-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi
# leaf NAME CN EKU [SAN]
leaf() {
  [[ -f $1.key ]] && return
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$3"
    [[ -n ${4:-} ]] && echo "subjectAltName=$4"
  } > "$1.ext"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
# Each member by name, not a wildcard: etcd accepts a peer only if a DNS name in its certificate
# resolves to the peer's address, and cannot resolve a wildcard.
sans="DNS:etcd.$NS.svc,DNS:localhost,IP:127.0.0.1" servers=""
for ((i = 0; i < MEMBERS; i++)); do
  sans+=",DNS:etcd-$i.etcd.$NS.svc,DNS:etcd-$i.etcd.$NS.svc.cluster.local"
  servers+="${servers:+,}https://etcd-$i.etcd.$NS.svc:2379"
done
leaf member etcd serverAuth,clientAuth "$sans"
leaf client ipam-apiserver clientAuth
printf %s "$servers" > servers
chmod 0644 ca.crt member.crt client.crt servers
echo "etcd certificates for namespace $NS in $(pwd): ca.crt, member.{crt,key}, client.{crt,key}, servers" >&2
