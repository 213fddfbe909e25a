"""A throwaway certificate authority for TLS tests, made with the openssl CLI (EC P-256, two
days)."""
import os
import shutil
import subprocess
import tempfile


def openssl(*args, cwd=None):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stderr))
    return r


class TestAuthority:
    def __init__(self, name="bgproxy test CA"):
        self.dir = tempfile.mkdtemp(prefix="bgproxy-ca-")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=" + name,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        self.ca_file = os.path.join(self.dir, "ca.pem")

    def leaf(self, stem, cn, dns_names, serial, directory=None, ips=(), usage="serverAuth"):
        """A leaf certificate signed by this CA: DIRECTORY/STEM.pem and STEM.key (DIRECTORY is
        the CA's own by default). Without dns_names and ips it has no subjectAltName (matched by
        its CN). Returns (pem, key)."""
        directory = directory or self.dir
        key = os.path.join(directory, stem + ".key")
        pem = os.path.join(directory, stem + ".pem")
        csr = os.path.join(directory, stem + ".csr")
        ext = os.path.join(directory, stem + ".ext")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=%s\nsubjectKeyIdentifier=hash\n"
                    "authorityKeyIdentifier=keyid,issuer\n" % usage)
            names = ["DNS:" + n for n in dns_names] + ["IP:" + ip for ip in ips]
            if names:
                f.write("subjectAltName=" + ",".join(names) + "\n")
        openssl("x509", "-req", "-in", csr, "-CA", self.ca_file,
                "-CAkey", os.path.join(self.dir, "ca.key"), "-set_serial", str(serial), "-days", "2",
                "-out", pem, "-extfile", ext)
        return pem, key

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
