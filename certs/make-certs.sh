#!/usr/bin/env bash
# Make a serving CA and a serving certificate for ipam-apiserver.ipam-system.svc with openssl,
# and print the APIService caBundle. Without cert-manager, this is how deploy/ gets its Secret.
#
# Usage: certs/make-certs.sh [DIR]        (default DIR: ./ipam-certs; existing files are kept)
#   IPAM_SVC / IPAM_NS override the Service name / namespace (ipam-apiserver / ipam-system).
# Then:
#   kubectl create namespace ipam-system
#   kubectl -n ipam-system create secret generic ipam-apiserver-serving \
#     --from-file=tls.crt=DIR/tls.crt --from-file=tls.key=DIR/tls.key --from-file=ca.crt=DIR/ca.crt
#   kubectl apply -k deploy/
#   kubectl patch apiservice v1alpha1.ipam.miloapis.com --type merge \
#     -p "{\"spec\":{\"caBundle\":\"$(base64 -w0 DIR/ca.crt)\"}}"
set -euo pipefail
DIR=${1:-./ipam-certs}
SVC=${IPAM_SVC:-ipam-apiserver}
NS=${IPAM_NS:-ipam-system}
DAYS=${IPAM_CERT_DAYS:-365}
mkdir -p "$DIR"
cd "$DIR"
umask 077

if [[ ! -f ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=ipam-apiserver-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
fi
if [[ ! -f tls.key ]]; then
  cat > tls.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$SVC.$NS.svc,DNS:$SVC.$NS.svc.cluster.local,DNS:$SVC.$NS,DNS:$SVC
EXT
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$SVC.$NS.svc" -keyout tls.key -out tls.csr 2>/dev/null
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -extfile tls.ext -out tls.crt 2>/dev/null
  rm -f tls.csr tls.ext
fi
chmod 0644 ca.crt tls.crt
echo "serving certificate for $SVC.$NS.svc in $(pwd) (ca.crt, tls.crt, tls.key)" >&2
echo "caBundle:" >&2
base64 -w0 ca.crt
echo
