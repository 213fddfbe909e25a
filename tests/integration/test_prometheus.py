"""The monitoring files in conf/ against the real tools and a real bgproxy: promtool on the scrape
config and the alert rules, the Grafana dashboard's queries against the metrics bgproxy exports,
and a real Prometheus scraping a real bgproxy through a split and a flip."""
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from etcd_cluster import EtcdCluster, etcd_available
from harness import ProcessTestCase, config, end_process, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMETHEUS_YML = os.path.join(ROOT, "conf/prometheus.yml")
ALERTS_YML = os.path.join(ROOT, "conf/bgproxy-alerts.yml")
DASHBOARD_JSON = os.path.join(ROOT, "conf/grafana/bgproxy-dashboard.json")
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

# The dashboard has well over this many queries; fewer means the walk below lost some.
MIN_DASHBOARD_EXPRS = 30

# Grafana's variables, replaced by values Prometheus accepts when the queries are run for real.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m", "$__interval": "15s",
                     "$__range": "5m"}


def temp_dir(test):
    d = tempfile.mkdtemp(prefix="bgproxy-prom-")
    test.addCleanup(shutil.rmtree, d, True)
    return d


def promtool(*args):
    return subprocess.run([PROMTOOL] + list(args), capture_output=True, text=True, timeout=60)


def alert_names(path=ALERTS_YML):
    with open(path) as f:
        return re.findall(r"(?m)^\s*-\s*alert:\s*(\S+)\s*$", f.read())


def load_dashboard():
    with open(DASHBOARD_JSON) as f:
        return json.load(f)


def dashboard_queries(dashboard):
    """(where, PromQL) for every `expr` anywhere in the dashboard (panels, their targets,
    panels nested in collapsed rows, annotations) and every query variable's query."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name")
            here = "%s/%s" % (where, title) if isinstance(title, str) else where
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append((here, value))
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(dashboard, "")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            found.append(("templating/%s" % var["name"], query or var.get("definition", "")))
    return found


def alert_queries(path=ALERTS_YML):
    """(alert, PromQL) for each rule of the alert file: `expr: ...` on one line or `expr: |`
    followed by an indented block (the only two forms the file uses)."""
    found = []
    with open(path) as f:
        lines = f.read().splitlines()
    alert = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-\s*alert:\s*(\S+)", line)
        if m:
            alert = m.group(1)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in ("|", ">", "|-", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                found.append((alert, " ".join(block)))
                continue
            found.append((alert, rest))
        i += 1
    return found


def metric_names_in(expr):
    """The bgproxy_ identifiers of a PromQL expression (string literals such as label values
    left out)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    return set(re.findall(r"\bbgproxy_[A-Za-z0-9_:]*", without_strings))


def exported_names(text):
    """Every sample name a /metrics page can have: each family of a `# TYPE` line, with the
    _bucket/_sum/_count series of histograms and summaries, and every sample seen."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            family, kind = m.groups()
            names.add(family)
            if kind == "histogram":
                names.update(family + s for s in ("_bucket", "_sum", "_count"))
            elif kind == "summary":
                names.update(family + s for s in ("_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[^{ ]+", line).group(0))
    return names


def http_get(port, path, method="GET", body=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class PromtoolTest(unittest.TestCase):
    def setUp(self):
        if PROMTOOL is None:
            self.skipTest("promtool not installed (Debian package prometheus, scripts/install-deps.sh)")

    def test_alert_rules_pass_promtool(self):
        r = promtool("check", "rules", ALERTS_YML)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        names = alert_names()
        self.assertGreaterEqual(len(names), 5)
        self.assertIn("SUCCESS: %d rules found" % len(names), r.stdout)

    def test_scrape_config_with_the_rules_beside_it_passes_promtool(self):
        d = temp_dir(self)
        shutil.copy(PROMETHEUS_YML, d)
        conf = os.path.join(d, os.path.basename(PROMETHEUS_YML))
        # The rule file is named relative to the config: without it beside, the check fails.
        r = promtool("check", "config", conf)
        self.assertNotEqual(r.returncode, 0, "promtool accepted a config whose rule file is missing")
        shutil.copy(ALERTS_YML, d)
        r = promtool("check", "config", conf)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS: 1 rule files found", r.stdout)

    def test_promtool_rejects_a_broken_rule(self):
        # The checks above can fail: a rule file with a PromQL syntax error is refused.
        path = os.path.join(temp_dir(self), "broken.yml")
        with open(ALERTS_YML) as f:
            text = f.read()
        broken = text.replace("bgproxy_panic == 1", "sum by (colour (bgproxy_panic) == 1", 1)
        self.assertNotEqual(broken, text)
        with open(path, "w") as f:
            f.write(broken)
        r = promtool("check", "rules", path)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("parse error", r.stdout + r.stderr)

    def test_error_rate_alert_fires_on_a_colours_5xx_share_only(self):
        """promtool test rules on synthetic series: green answers 10 % 5xx and alerts after
        5 minutes; blue at 1 % does not; proxy-made answers (colour none) never count."""
        d = temp_dir(self)
        shutil.copy(ALERTS_YML, d)
        series = lambda colour, backend, code: (
            'bgproxy_http_responses_total{instance="p:9901",job="bgproxy",colour="%s",'
            'backend="%s",method="GET",code="%s"}' % (colour, backend, code))
        tests = """
rule_files: [%s]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: '%s', values: '0+90x20'}
      - {series: '%s', values: '0+10x20'}
      - {series: '%s', values: '0+99x20'}
      - {series: '%s', values: '0+1x20'}
      - {series: '%s', values: '0+500x20'}
      - {series: '%s', values: '0+500x20'}
    alert_rule_test:
      - {eval_time: 4m, alertname: BgproxyColourErrorRate, exp_alerts: []}
      - eval_time: 10m
        alertname: BgproxyColourErrorRate
        exp_alerts:
          - exp_labels: {severity: warn, instance: "p:9901", colour: green}
            exp_annotations:
              summary: "green answers 10%% of its requests with 5xx on p:9901"
              description: "More than 5 %% of the responses served by green were 5xx for 5 minutes (bgproxy_http_responses_total)."
""" % (os.path.basename(ALERTS_YML),
       series("green", "green-1", "2xx"), series("green", "green-1", "5xx"),
       series("blue", "blue-1", "2xx"), series("blue", "blue-1", "5xx"),
       series("none", "none", "5xx"), series("none", "none", "4xx"))
        path = os.path.join(d, "alerts_test.yml")
        with open(path, "w") as f:
            f.write(tests)
        r = promtool("test", "rules", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class DashboardTest(ProcessTestCase):
    def test_dashboard_is_importable_json_with_a_datasource_input_and_an_instance_variable(self):
        dash = load_dashboard()
        self.assertGreaterEqual(dash["schemaVersion"], 36)
        self.assertIn("DS_PROMETHEUS", [i["name"] for i in dash["__inputs"]])
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        self.assertEqual(variables["DS_PROMETHEUS"]["type"], "datasource")
        self.assertEqual(variables["instance"]["type"], "query")
        panels = []
        for p in dash["panels"]:
            panels.append(p)
            panels.extend(p.get("panels", []))
        ids = [p["id"] for p in panels]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are not unique")
        for p in panels:
            if p["type"] != "row":
                self.assertEqual(p["datasource"]["uid"], "${DS_PROMETHEUS}", p["title"])
                for t in p["targets"]:
                    self.assertIn('instance=~"$instance"', t["expr"], p["title"])
        annotations = [a.get("expr", "") for a in dash["annotations"]["list"]]
        self.assertTrue(any("changes(bgproxy_switches_total" in a for a in annotations))
        self.assertTrue(any('kind=~"auto_revert|outlier_revert|canary_revert|failover"' in a for a in annotations))

    def test_every_query_names_only_metrics_bgproxy_exports(self):
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1"), self.backend("green-2")]
        # In a fleet (a one-member etcd), so the fleet's metrics are exported too.
        fleet = ""
        if etcd_available():
            etcd = EtcdCluster(1)
            self.addCleanup(etcd.close)
            fleet = '[fleet]\nendpoints = ["%s"]\nname = "dash"\n' % etcd.members[0].url
        proxy = self.proxy(config(blue, green, weights=(50, 50), extra=fleet))
        # Traffic to every backend of both colours, with bodies both ways, so that series
        # created on first use exist.
        for i in range(16):
            status, _ = http_get(proxy.port, "/t%d?bytes=100" % i)
            self.assertEqual(status, 200)
            status, _ = http_get(proxy.port, "/upload", method="POST", body=b"x" * 50)
            self.assertEqual(status, 200)
        # The per-member lag has a series once this instance has seen the membership (its own
        # lease included): right after the start it may not yet (failed once so, on a loaded run).
        deadline = time.time() + 10
        while True:
            status, body = http_get(proxy.admin_port, "/metrics")
            self.assertEqual(status, 200)
            exported = exported_names(body.decode())
            if not fleet or "bgproxy_fleet_member_lag_versions" in exported or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertIn("bgproxy_build_info", exported)

        queries = dashboard_queries(load_dashboard())
        self.assertGreaterEqual(len(queries), MIN_DASHBOARD_EXPRS)
        alerts = alert_queries()
        self.assertEqual(len(alerts), len(alert_names()))
        missing = {}
        for where, expr in queries + [("alert " + a, e) for a, e in alerts]:
            names = metric_names_in(expr)
            self.assertTrue(names, "%s: no bgproxy_ metric in %r" % (where, expr))
            for name in names - exported:
                missing.setdefault(name, []).append(where)
        self.assertEqual(missing, {}, "queried but not exported by this bgproxy:\n" +
                         "\n".join("%s: %s" % (n, ", ".join(w)) for n, w in sorted(missing.items())))


class PrometheusServer:
    """A real Prometheus on a free loopback port; its log goes to a file in its directory."""

    def __init__(self, config_path, directory):
        for attempt in range(3):
            self.port = free_port()
            self.args = [PROMETHEUS, "--config.file=" + config_path,
                         "--storage.tsdb.path=" + os.path.join(directory, "data"),
                         "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"]
            self.log_path = os.path.join(directory, "prometheus.log")
            self.log = open(self.log_path, "w")
            self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
            if self.wait_ready(30):
                return
            self.stop()
            if "address already in use" not in self.output():
                break  # not the port race free_port() leaves open: no point retrying
        raise RuntimeError("prometheus did not become ready:\n" + self.output())

    def wait_ready(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                    if r.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        return False

    def output(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # 400/422 carry the error as JSON
            return json.load(e)

    def query(self, promql):
        """The instant vector as {frozenset of labels without __name__: value}."""
        reply = self.api("query", query=promql)
        if reply.get("status") != "success":
            raise AssertionError("query %r failed: %s" % (promql, reply))
        return {frozenset((k, v) for k, v in s["metric"].items() if k != "__name__"):
                float(s["value"][1]) for s in reply["data"]["result"]}

    def stop(self):
        end_process(self.proc, grace=10)
        if not self.log.closed:
            self.log.close()
        return ""


def prometheus_config_for(admin_port):
    """conf/prometheus.yml with the target replaced by the proxy's admin address and 1 s
    intervals; same job and rule file."""
    with open(PROMETHEUS_YML) as f:
        text = f.read()
    if not re.search(r"(?m)^\s*-\s*job_name:\s*bgproxy\s*$", text):
        raise AssertionError("conf/prometheus.yml has no job bgproxy")
    text, n = re.subn(r"(?m)^(\s*scrape_interval:\s*)\S+", r"\g<1>1s", text)
    if n < 1:
        raise AssertionError("conf/prometheus.yml: no scrape_interval")
    text, n = re.subn(r"(?m)^(\s*evaluation_interval:\s*)\S+", r"\g<1>1s", text)
    if n < 1:
        raise AssertionError("conf/prometheus.yml: no evaluation_interval")
    text, n = re.subn(r"targets:\s*\[[^\]]*\]", 'targets: ["127.0.0.1:%d"]' % admin_port, text)
    if n != 1:
        raise AssertionError("conf/prometheus.yml: expected one targets list, found %d" % n)
    return text


class PrometheusTest(ProcessTestCase):
    def setUp(self):
        if PROMETHEUS is None:
            self.skipTest("prometheus not installed (Debian package prometheus, scripts/install-deps.sh)")
        super().setUp()

    def poll(self, prom, promql, expected, what, timeout=20):
        """Queries until the result equals `expected`; fails with the last result."""
        deadline = time.time() + timeout
        got = None
        while time.time() < deadline:
            got = prom.query(promql)
            if got == expected:
                return got
            time.sleep(0.25)
        self.fail("%s: %s gave %s, expected %s after %d s\nprometheus log:\n%s"
                  % (what, promql, got, expected, timeout, prom.output()))

    def test_prometheus_scrapes_the_split_the_rules_and_a_flip(self):
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1"), self.backend("green-2")]
        # One worker: the colour choice is error diffusion per worker, so 300 requests at
        # 66.67/33.33 split 200/100 (199/101 or 201/99 for one start phase in a hundred).
        proxy = self.proxy(config(blue, green, weights=(66.67, 33.33)), workers=1)
        d = temp_dir(self)
        shutil.copy(ALERTS_YML, d)
        conf = os.path.join(d, os.path.basename(PROMETHEUS_YML))
        with open(conf, "w") as f:
            f.write(prometheus_config_for(proxy.admin_port))
        prom = self.start(PrometheusServer(conf, d))
        colour = lambda c: frozenset({("colour", c)})

        self.poll(prom, 'up{job="bgproxy"}', {frozenset({("job", "bgproxy"),
                  ("instance", "127.0.0.1:%d" % proxy.admin_port)}): 1.0}, "scrape target up")

        served = {"blue": 0, "green": 0}
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        for i in range(300):
            conn.request("GET", "/r%d" % i)
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            served[r.getheader("X-Backend").split("-")[0]] += 1
        conn.close()
        print("300 requests at 66.67/33.33: %s" % served)
        self.assertEqual(sum(served.values()), 300)
        self.assertLessEqual(abs(served["green"] - 100), 1, served)
        expected = {colour(c): float(n) for c, n in served.items()}

        self.poll(prom, 'sum by (colour) (bgproxy_backend_requests_total{job="bgproxy"})', expected,
                  "requests per colour (per backend counter)")
        weights = prom.query('bgproxy_colour_weight_ratio{job="bgproxy"}')
        self.assertEqual(len(weights), 2, weights)
        by_colour = {dict(k)["colour"]: v for k, v in weights.items()}
        self.assertAlmostEqual(by_colour["blue"], 0.6667, places=6)
        self.assertAlmostEqual(by_colour["green"], 0.3333, places=6)

        # The alert rules are loaded from the file beside the config and evaluate cleanly.
        deadline = time.time() + 20
        while True:
            groups = prom.api("rules", type="alert")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if (rules and all(r["health"] != "unknown" for r in rules)) or time.time() > deadline:
                break  # "unknown" until the first evaluation
            time.sleep(0.25)
        self.assertEqual(sorted(r["name"] for r in rules), sorted(alert_names()))
        for r in rules:
            self.assertEqual(r["health"], "ok", "%s: %s" % (r["name"], r.get("lastError")))
            self.assertEqual(r["state"], "inactive", r["name"])

        # Every dashboard query is valid PromQL for this Prometheus.
        bad = []
        for where, expr in dashboard_queries(load_dashboard()):
            if expr.startswith("label_values("):
                continue  # Grafana's own variable query syntax, not PromQL
            promql = expr
            for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                promql = promql.replace(var, value)
            reply = prom.api("query", query=promql)
            if reply.get("status") != "success":
                bad.append("%s: %s: %s" % (where, promql, reply.get("error")))
        self.assertEqual(bad, [], "\n".join(bad))

        r = proxy.bgctl("flip")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.poll(prom, 'bgproxy_switches_total{job="bgproxy",kind="flip"}',
                  {frozenset({("job", "bgproxy"), ("instance", "127.0.0.1:%d" % proxy.admin_port),
                              ("kind", "flip")}): 1.0}, "flip counted")
        self.poll(prom, 'sum by (colour) (bgproxy_colour_weight_ratio{job="bgproxy"})',
                  {colour("blue"): 0.0, colour("green"): 1.0}, "weights after the flip")

        # Last: the per-colour response counter (needs a bgproxy with bgproxy_http_responses_total).
        self.poll(prom, 'sum by (colour) (bgproxy_http_responses_total{job="bgproxy",colour!="none"})',
                  expected, "responses per colour")


if __name__ == "__main__":
    unittest.main(verbosity=2)
