"""deploy/k8s/ (docs/kubernetes.md): every manifest valid against the Kubernetes schemas, the
probes and commands the gateway really answers to, and a metrics setup that counts each call once.

Built-in kinds are checked by kubernetes-validate (the API's own OpenAPI schemas, strict: an
unknown field is an error); the ServiceMonitor by prometheus-operator's CRD schema, vendored under
tests/gateway_project/schemas/, made as strict.
"""

import copy
import re
import shutil
import subprocess  # nosec B404: runs kubectl kustomize, a fixed command line
import time
from io import StringIO

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, start_gateway, wait_until

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33.0"  # the oldest minor still supported upstream when this was written
CRD = ROOT / "tests" / "gateway_project" / "schemas" / "monitoring.coreos.com_servicemonitors.yaml"
METRICS_TOKEN = "k8s-metrics-token-for-tests"  # nosec B105: the test gateways' own


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def generated() -> list[dict]:
    """The ConfigMaps of the configMapGenerator, as kustomize makes them (each file's name its key;
    kustomize also adds a hash of the content to the name and to every reference to it)."""
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
             "data": {path.rsplit("/", 1)[-1]: (K8S / path).read_text() for path in generator["files"]}}
            for generator in kustomization().get("configMapGenerator", [])]


def manifests() -> list[dict]:
    """Every object the kustomization applies, with its common labels as kustomize adds them."""
    common = kustomization()["labels"][0]["pairs"]
    objects = []
    docs = [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())]
    for doc in [*docs, *generated()]:
        doc["metadata"].setdefault("labels", {}).update(common)
        doc["metadata"]["namespace"] = kustomization()["namespace"]
        objects.append(doc)
    return objects


def by_kind(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in manifests() if o["kind"] == kind}


def strict(schema):
    """The CRD's schema, with no field allowed that it does not name (as kubectl's --validate=strict)."""
    schema = copy.deepcopy(schema)
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for key, value in list(schema.items()):
            schema[key] = strict(value) if isinstance(value, dict | list) else value
    elif isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def service_monitor_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def test_every_file_is_applied_and_every_manifest_is_valid_against_the_schemas():
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    monitor_schema = service_monitor_schema()
    kinds = set()
    for obj in manifests():
        kinds.add(obj["kind"])
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, monitor_schema)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Job", "ServiceMonitor", "ConfigMap"}


@pytest.mark.parametrize("broken, error", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}), "readinesProbe"),
    (lambda d: d["spec"].update(replicas="two"), "two"),
])
def test_the_validation_catches_a_typo_and_a_wrong_type(broken, error):
    deployment = copy.deepcopy(by_kind("Deployment")["gateway"])
    broken(deployment)
    with pytest.raises(kubernetes_validate.ValidationError, match=error):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    monitor = copy.deepcopy(by_kind("ServiceMonitor")["llm-gateway"])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, service_monitor_schema())


def _container(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


def test_gateway_pods_run_manage_py_serve_with_probes_the_gateway_answers(gateway):
    for name in ("gateway", "gateway-metrics"):
        container = _container(by_kind("Deployment")[name])
        assert container["command"][:3] == ["python", "manage.py", "serve"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
        assert container["command"][container["command"].index("--port") + 1] == str(port)
    # The paths are the gateway's own: a live gateway answers both.
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    # (A busy machine may make a first check slower than its 2 s timeout: a probe retries too.)
    ready = wait_until(lambda: (r := httpx.get(gateway.url + "/readyz")).status_code == 200 and r, timeout=30,
                       interval=1)
    assert ready and ready.json()["status"] == "ready"


def test_workers_beat_migrations_and_the_autoscaler():
    deployments = by_kind("Deployment")
    assert _container(deployments["worker"])["command"][:4] == ["celery", "-A", "gateway_project", "worker"]
    beat = deployments["beat"]
    assert _container(beat)["command"][:4] == ["celery", "-A", "gateway_project", "beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    for name in ("gateway", "gateway-metrics", "worker", "beat"):
        init = deployments[name]["spec"]["template"]["spec"]["initContainers"][0]
        assert "migrate --check" in init["command"][-1]
    # Files one gateway pod stores, a worker reads: one shared volume at MEDIA_ROOT for both.
    media = by_kind("ConfigMap")["gateway-config"]["data"]["MEDIA_ROOT"]
    (claim,) = by_kind("PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("gateway", "worker"):
        pod = deployments[name]["spec"]["template"]["spec"]
        volume = next(v["name"] for v in pod["volumes"]
                      if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"])
        assert {"name": volume, "mountPath": media} in _container(deployments[name])["volumeMounts"]
    (hpa,) = by_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert _container(deployments["gateway"])["resources"]["requests"]["cpu"]  # what utilization is a share of


def _file_mounted(pod: dict, container: dict, path: str) -> dict | None:
    """The ConfigMap and key that `path` is in `container`, or None."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder) and "configMap" in volumes[mount["name"]]:
            return {"configmap": volumes[mount["name"]]["configMap"]["name"], "key": path[len(folder):],
                    "read_only": mount.get("readOnly", False)}
    return None


def test_the_migrate_job_migrates_then_applies_the_configuration_file_mounted_from_a_config_map():
    pod = by_kind("Job")["gateway-migrate"]["spec"]["template"]["spec"]
    # Init containers run in order, each to success, before the containers: migrate, then apply.
    (migrate,) = pod["initContainers"]
    (apply,) = pod["containers"]
    assert migrate["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert apply["command"][:3] == ["python", "manage.py", "apply_config"] and len(apply["command"]) == 4
    assert pod["restartPolicy"] == "OnFailure"  # a failed apply is retried, never half-applied (one transaction)
    mounted = _file_mounted(pod, apply, apply["command"][3])
    assert mounted is not None and mounted["read_only"], apply["volumeMounts"]
    config_map = by_kind("ConfigMap")[mounted["configmap"]]
    assert (mounted["configmap"], "gateway-config-file") == (config_map["metadata"]["name"], "gateway-config-file")
    assert config_map["data"][mounted["key"]] == (K8S / "config" / "gateway.yaml").read_text()
    # Both run with the same database and settings as the pods that serve.
    for container in (migrate, apply):
        assert {"configMapRef": {"name": "gateway-config"}} in container["envFrom"]
        assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "gateway-database", "key": "url"}


def test_the_clusters_configuration_file_applies_and_its_secrets_come_from_the_secret(monkeypatch, transactional_db):
    """The file the Job applies is valid (applied here to an empty database) and holds no secret:
    each {env: NAME} it names is a variable of every pod that calls providers, from the
    gateway-provider-keys Secret."""
    from django.core.management import call_command

    from providers.models import Deployment, Provider
    from routing.models import Route
    from tenants.models import Membership, Tenant

    text = (K8S / "config" / "gateway.yaml").read_text()
    names = set(re.findall(r"\{env: (\w+)\}", text))
    assert names == {"GATEWAY_PROVIDER_KEY_OPENAI", "GATEWAY_PROVIDER_KEY_ANTHROPIC"}
    for name in names:
        monkeypatch.setenv(name, f"sk-{name.lower()}-for-tests")
    out = StringIO()
    call_command("apply_config", str(K8S / "config" / "gateway.yaml"), stdout=out)
    assert set(Provider.objects.values_list("name", "api_key_env")) == {
        ("openai", "GATEWAY_PROVIDER_KEY_OPENAI"), ("anthropic", "GATEWAY_PROVIDER_KEY_ANTHROPIC")}
    assert Deployment.objects.count() == 4 and Route.objects.filter(name="smart").exists()
    member = Membership.objects.get(tenant=Tenant.objects.get(slug="acme"))
    assert (member.user.email, member.role) == ("platform-team@example.com", "owner")
    out = StringIO()
    call_command("apply_config", str(K8S / "config" / "gateway.yaml"), stdout=out)  # the Job run again
    assert "No changes." in out.getvalue()
    deployments, job = by_kind("Deployment"), by_kind("Job")["gateway-migrate"]
    for workload in (deployments["gateway"], deployments["gateway-metrics"], deployments["worker"], job):
        assert {"secretRef": {"name": "gateway-provider-keys"}} in _container(workload)["envFrom"]


def test_kustomize_builds_what_these_tests_validate():
    """`kubectl kustomize` (what `kubectl apply -k` runs; kubectl is on this kind of machine) builds
    the objects read above, the generated ConfigMap under a hashed name every reference follows,
    and the build itself passes the strict validation."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to build deploy/k8s with kustomize"
    built = list(yaml.safe_load_all(subprocess.run(  # nosec B603: a fixed command line
        [kubectl, "kustomize", str(K8S)], check=True, capture_output=True, text=True, timeout=60).stdout))
    hashed = {o["metadata"]["name"]: o for o in built if o["kind"] == "ConfigMap"}
    (config_file,) = [n for n in hashed if re.fullmatch(r"gateway-config-file-[a-z0-9]{10}", n)]
    assert sorted((o["kind"], o["metadata"]["name"].replace(config_file, "gateway-config-file")) for o in built) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in manifests())
    assert hashed[config_file]["data"] == by_kind("ConfigMap")["gateway-config-file"]["data"]
    (job,) = [o for o in built if o["kind"] == "Job"]
    assert {"name": "config-file", "configMap": {"name": config_file}} in job["spec"]["template"]["spec"]["volumes"]
    for obj in built:
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_secrets_are_referenced_never_shipped():
    assert not [o for o in manifests() if o["kind"] == "Secret"]
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    referenced = (set(re.findall(r"secretName: ([\w-]+)", text)) | set(re.findall(r"secretKeyRef: \{name: ([\w-]+)", text))
                  | set(re.findall(r"secretRef: \{name: ([\w-]+)", text)))
    assert referenced == {"gateway-secrets", "gateway-database", "gateway-provider-keys"}
    # Secrets reach the gateway as *_FILE paths into the mounted Secret, never as values in the ConfigMap.
    config = by_kind("ConfigMap")["gateway-config"]["data"]
    assert config["SECRET_KEY_FILE"].startswith("/run/secrets/gateway/")
    assert not any(re.search(r"SECRET_KEY$|PASSWORD|METRICS_TOKEN$", name) for name in config)


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_service_monitor_reaches_exactly_one_pod_that_no_client_traffic_reaches():
    (monitor,) = by_kind("ServiceMonitor").values()
    services = [s for s in by_kind("Service").values()
                if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["gateway-metrics"]
    scraped = [d for d in by_kind("Deployment").values()
               if _matches(services[0]["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    assert [d["metadata"]["name"] for d in scraped] == ["gateway-metrics"]
    metrics = scraped[0]
    # One replica, never two during a rollout, never scaled.
    assert metrics["spec"]["replicas"] == 1 and metrics["spec"]["strategy"]["type"] == "Recreate"
    assert all(h["spec"]["scaleTargetRef"]["name"] != "gateway-metrics"
               for h in by_kind("HorizontalPodAutoscaler").values())
    # Clients reach the gateway pods only; the monitor's port is the metrics Service's.
    gateway_service = by_kind("Service")["gateway"]
    assert not _matches(gateway_service["spec"]["selector"], metrics["spec"]["template"]["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "gateway-secrets"


def _requests_total(server) -> float:
    text = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    return sum(float(value) for value in
               re.findall(r'^gateway_requests_total\{[^}]*endpoint="chat.completions"[^}]*\} (\S+)$', text, re.M))


def test_one_scrape_of_the_metrics_pod_counts_each_call_of_the_fleet_once(gateway_env, mock_provider, api_key):
    """Two gateway "pods" share Redis as in the cluster, a third plays the metrics pod. The calls
    go to the first two; the ServiceMonitor's one target counts each once, where a monitor on
    every pod (what the manifests avoid) would count each three times."""
    env = {**gateway_env, "METRICS_TOKEN": METRICS_TOKEN, "METRICS_ALLOW": ""}
    fleet = [start_gateway(env), start_gateway(env)]
    metrics_pod = start_gateway(env)
    try:
        before = _requests_total(metrics_pod)
        calls = 0
        for server in fleet:
            models = lambda s=server: httpx.get(s.url + "/v1/models", headers={"authorization": f"Bearer {api_key[1]}"})  # noqa: E731
            assert wait_until(lambda m=models: "gpt-test" in m().text, timeout=20)
            for _ in range(5):
                answer = httpx.post(server.url + "/v1/chat/completions", timeout=20,
                                    headers={"authorization": f"Bearer {api_key[1]}"},
                                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
                assert answer.status_code == 200
                calls += 1
        # Each process pushes its counts to Redis once a second.
        assert wait_until(lambda: _requests_total(metrics_pod) - before == calls, timeout=20, interval=0.25), (
            _requests_total(metrics_pod) - before)
        time.sleep(2.5)  # two more pushes: nothing is counted twice later either
        assert _requests_total(metrics_pod) - before == calls == 10
        # Every process answers for the fleet: scraping each (a monitor on the gateway Service) triples it.
        assert sum(_requests_total(s) for s in [*fleet, metrics_pod]) - 3 * before == 3 * calls
    finally:
        for server in [*fleet, metrics_pod]:
            server.stop()
