"""A real etcd cluster on 127.0.0.1 for fleet tests: Debian's etcd-server, N members started
by the test (fresh data directories, free ports), stopped, killed and restarted by it."""
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

from harness import free_port

ETCD = os.environ.get("ETCD", shutil.which("etcd") or "/usr/bin/etcd")


def etcd_available():
    return os.path.exists(ETCD)


class EtcdMember:
    def __init__(self, name, client_port, peer_port, data_dir, log_path, scheme="http"):
        self.scheme = scheme
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.client_port)


class EtcdCluster:
    def __init__(self, size=3, tls=None):
        """tls: (server (pem, key), CA file, client (pem, key)): clients must connect with TLS
        and a certificate the CA signed (the peers still talk plain HTTP)."""
        self.dir = tempfile.mkdtemp(prefix="bgproxy-etcd-")
        self.token = "bg-%d-%d" % (os.getpid(), int(time.time() * 1000))
        self.tls = tls
        self.context = None
        if tls:
            self.context = ssl.create_default_context(cafile=tls[1])
            self.context.load_cert_chain(*tls[2])
        self.members = [
            EtcdMember("m%d" % i, free_port(), free_port(), os.path.join(self.dir, "m%d" % i),
                       os.path.join(self.dir, "m%d.log" % i), "https" if tls else "http")
            for i in range(size)]
        self.initial = ",".join("%s=http://127.0.0.1:%d" % (m.name, m.peer_port)
                                for m in self.members)
        for i in range(size):
            self.start(i)
        self.wait_ready()

    @property
    def endpoints(self):
        return ",".join(m.url for m in self.members)

    def start(self, i):
        m = self.members[i]
        args = [ETCD, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                "--listen-peer-urls", "http://127.0.0.1:%d" % m.peer_port,
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % m.peer_port,
                "--initial-cluster", self.initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new",
                # Quick elections, so a test does not wait seconds for a new leader.
                "--heartbeat-interval", "50", "--election-timeout", "500"]
        if self.tls:
            args += ["--cert-file", self.tls[0][0], "--key-file", self.tls[0][1],
                     "--trusted-ca-file", self.tls[1], "--client-cert-auth"]
        log = open(m.log_path, "a")
        m.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def call(self, i, path, body, timeout=2):
        """One POST to member i's JSON gateway; the decoded answer."""
        request = urllib.request.Request(self.members[i].url + path,
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as r:
            return json.loads(r.read())

    def running(self, i):
        p = self.members[i].proc
        return p is not None and p.poll() is None

    def leader(self):
        """The index of the member that is the leader now, or None."""
        for i, m in enumerate(self.members):
            if not self.running(i):
                continue
            try:
                s = self.call(i, "/v3/maintenance/status", {})
            except Exception:
                continue
            leader = s.get("leader")
            if leader and leader != "0":
                for j, other in enumerate(self.members):
                    if not self.running(j):
                        continue
                    try:
                        if self.call(j, "/v3/maintenance/status", {})["header"]["member_id"] == leader:
                            return j
                    except Exception:
                        continue
        return None

    def wait_ready(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.leader() is not None:
                return
            time.sleep(0.1)
        raise RuntimeError("etcd cluster did not elect a leader; logs in %s" % self.dir)

    def kill(self, i, sig=signal.SIGKILL):
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(sig)
            m.proc.wait(10)

    def pause(self, i):
        """SIGSTOP member i: hung, its kernel still taking connections and requests (and
        answering TCP keepalives) that no one answers."""
        if self.running(i):
            self.members[i].proc.send_signal(signal.SIGSTOP)

    def resume(self, i):
        if self.running(i):
            self.members[i].proc.send_signal(signal.SIGCONT)

    def pause_all(self):
        for i in range(len(self.members)):
            self.pause(i)

    def resume_all(self):
        for i in range(len(self.members)):
            self.resume(i)

    def rebuild(self):
        """Every member stopped, its data gone, started again: an empty cluster whose
        revisions start again from 1."""
        self.stop_all()
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)
        self.start_all()

    def stop_all(self):
        for i in range(len(self.members)):
            self.kill(i, signal.SIGTERM)

    def start_all(self):
        for i in range(len(self.members)):
            if not self.running(i):
                self.start(i)
        self.wait_ready()

    def close(self):
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)
