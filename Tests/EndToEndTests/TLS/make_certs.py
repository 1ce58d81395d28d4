#!/usr/bin/env python3
"""Test certificates for the secured-registry tests, written into DIR.

  make_certs.py DIR NAME [--ca CA] [--server] [--client] [--expired] [--dns NAME ...]

Makes (or reuses) the CA `CA` (files CA.pem, CA.key) and issues NAME.pem / NAME.key from it: a server certificate
for 127.0.0.1, ::1 and localhost (plus --dns names; --no-ip leaves the addresses out), or a client certificate. --expired issues one that ended
yesterday. With NAME equal to CA only the CA is made. Keys are EC P-256 (fast to make)."""
import argparse, datetime, ipaddress, os
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

p = argparse.ArgumentParser()
p.add_argument("dir"); p.add_argument("name")
p.add_argument("--ca", default="ca"); p.add_argument("--server", action="store_true"); p.add_argument("--client", action="store_true")
p.add_argument("--expired", action="store_true"); p.add_argument("--dns", nargs="*", default=[])
p.add_argument("--no-ip", action="store_true", help="names only: no IP address in the server certificate")
a = p.parse_args()
os.makedirs(a.dir, exist_ok=True)
now = datetime.datetime.now(datetime.timezone.utc)

def write(name, cert, key):
    with open(os.path.join(a.dir, name + ".pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(a.dir, name + ".key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

ca_pem, ca_key_path = os.path.join(a.dir, a.ca + ".pem"), os.path.join(a.dir, a.ca + ".key")
if os.path.exists(ca_pem):
    ca = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
    ca_key = serialization.load_pem_private_key(open(ca_key_path, "rb").read(), None)
else:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signpost test " + a.ca)])
    ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write(a.ca, ca, ca_key)
if a.name == a.ca:
    raise SystemExit(0)

key = ec.generate_private_key(ec.SECP256R1())
start, end = (now - datetime.timedelta(days=3), now - datetime.timedelta(days=1)) if a.expired else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7))
b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, a.name)]))
     .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
     .not_valid_before(start).not_valid_after(end))
usages = []
if a.server:
    names = [x509.DNSName("localhost")] + [x509.DNSName(d) for d in a.dns]
    if not a.no_ip:
        names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
if a.client:
    usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
if usages:
    b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
write(a.name, b.sign(ca_key, hashes.SHA256()), key)
