#!/bin/sh
# Makes a throwaway PKI for the proxy tests in DIR (default: ./pki):
#   server-ca.pem            CA that signed the server certificate (clients trust it)
#   server.pem, server.key   for localhost, 127.0.0.1 and ::1 (plus $SERVER_SAN,
#                            e.g. SERVER_SAN=IP:10.88.1.1)
#   clients-ca.pem           CA the proxy trusts for client certificates
#   CLIENT.pem, CLIENT.key   client certificates signed by clients-ca, for each
#                            name given after DIR (SAN DNS CLIENT.clients.test, CN CLIENT)
#   rogue.pem, rogue.key     a client certificate for alice.clients.test signed by
#                            a CA the proxy does not trust
# EC P-256 keys, valid for 2 days. Needs only openssl.
set -eu
dir=${1:-pki}
shift || true
mkdir -p "$dir"
cd "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ca() { # NAME SUBJECT
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 2 -out "$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

leaf() { # NAME CA SAN EKU CN
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$5" -out "$1.csr"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$4" "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

ca server-ca "warden test server CA"
ca clients-ca "warden test clients CA"
ca rogue-ca "rogue CA"
leaf server server-ca "DNS:localhost,IP:127.0.0.1,IP:::1${SERVER_SAN:+,$SERVER_SAN}" serverAuth localhost
for name in "$@"; do
    leaf "$name" clients-ca "DNS:$name.clients.test" clientAuth "$name"
done
leaf rogue rogue-ca "DNS:alice.clients.test" clientAuth alice
chmod 644 ./*.pem
