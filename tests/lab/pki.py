"""A throwaway certificate authority for the lab's OpenVPN client and server.

EC P-256 keys and a two-day lifetime: fast to make, useless once the lab is gone. The
file names (ca.crt, client.crt, client.key, server.crt, server.key) are the ones the
example configs in configs/openvpn/ refer to, so OpenVPN runs with `--cd` into this
directory and reads the example config unchanged.
"""

import os

from .netns import run

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_USAGE = {
    "server": "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyAgreement\n",
    "client": "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyAgreement\n",
}


def make_pki(directory):
    """Create the CA, server and client certificates in *directory*; return it."""
    os.makedirs(directory, exist_ok=True)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    run(["openssl", "req", "-x509", *_KEY, "-keyout", path("ca.key"), "-out", path("ca.crt"),
         "-days", "2", "-subj", "/CN=vpnsplit lab CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    for role in ("server", "client"):
        ext = path(f"{role}.ext")
        with open(ext, "w") as f:
            f.write(_USAGE[role])
        run(["openssl", "req", *_KEY, "-keyout", path(f"{role}.key"), "-out", path(f"{role}.csr"),
             "-subj", f"/CN=vpnsplit-lab-{role}"])
        run(["openssl", "x509", "-req", "-in", path(f"{role}.csr"), "-CA", path("ca.crt"), "-CAkey", path("ca.key"),
             "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", path(f"{role}.crt")])
    return directory
