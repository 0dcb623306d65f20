"""The local node agent against the real control plane: the real scheduler binds pods to the GPU
node, the real Job controller and garbage collector act on them, and the agent runs them as
local processes. Everything is observed through kubectl, as a user would."""

from __future__ import annotations

import json
import os
import signal
import ssl
import tempfile
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from localcluster.paths import POD_CIDR, PORTS
from tests.support import images
from tests.support.kube import exists, kubectl, kubectl_json, wait_for

# The node agent's own tests run busybox as root with host paths: not "restricted" pods.
pytestmark = pytest.mark.unrestricted_pods

NODE = "local-gpu-0"


def apply(namespace: str, *objects: dict[str, Any]) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": containers,
            **spec,
        },
    }


def job(name: str, container: dict[str, Any], backoff_limit: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                }
            },
        },
    }


def get_pod(namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl_json("get", "pod", name, "-n", namespace)
    return result


def wait_phase(namespace: str, name: str, *phases: str, timeout: float = 45) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        p = get_pod(namespace, name)
        return p if p.get("status", {}).get("phase") in phases else None

    return wait_for(check, timeout, f"pod {namespace}/{name} in phase {'/'.join(phases)}")


def job_condition(namespace: str, name: str, ctype: str) -> dict[str, Any] | None:
    j = kubectl_json("get", "job", name, "-n", namespace)
    for c in j.get("status", {}).get("conditions") or []:
        if c["type"] == ctype and c["status"] == "True":
            return dict(c)
    return None


def logs(namespace: str, *args: str) -> str:
    return kubectl("logs", "-n", namespace, *args).stdout


def busybox(script: str, **extra: Any) -> dict[str, Any]:
    return {"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script], **extra}


# ---------------------------------------------------------------------------------------------


def test_gpu_node_registered_ready_with_lease(cluster: dict[str, str]) -> None:
    node = kubectl_json("get", "node", NODE)
    conditions = {c["type"]: c for c in node["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert node["status"]["capacity"]["cpu"] == "16"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert node["spec"]["podCIDR"] == POD_CIDR
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses == {"InternalIP": "127.0.0.1", "Hostname": NODE}
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == server
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == PORTS.kubelet
    lease = kubectl_json("get", "lease", NODE, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == NODE
    first = lease["spec"]["renewTime"]
    wait_for(
        lambda: kubectl_json("get", "lease", NODE, "-n", "kube-node-lease")["spec"]["renewTime"] != first,
        25,
        "the node lease to be renewed",
    )
    out = kubectl("get", "nodes").stdout
    assert NODE in out
    assert " Ready " in out


def test_gpu_job_completes_with_logs_and_termination_message(namespace: str) -> None:
    container = busybox(
        'echo hello from $(POD_NAME); echo step 2; echo \'{"result": "ok"}\' > /dev/termination-log',
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        resources={"limits": {"nvidia.com/gpu": 1}},
    )
    apply(namespace, job("gpu-hello", container))
    wait_for(lambda: job_condition(namespace, "gpu-hello", "Complete"), 45, "job gpu-hello Complete")
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=gpu-hello")["items"]
    assert len(pods) == 1
    p = pods[0]
    name = p["metadata"]["name"]
    assert p["spec"]["nodeName"] == NODE
    assert p["status"]["phase"] == "Succeeded"
    assert logs(namespace, "job/gpu-hello") == f"hello from {name}\nstep 2\n"
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0
    assert term["reason"] == "Completed"
    assert json.loads(term["message"]) == {"result": "ok"}
    assert logs(namespace, name, "--tail=1") == "step 2\n"
    stamped = logs(namespace, name, "--timestamps")
    assert stamped.splitlines()[0].split(" ", 1)[1] == f"hello from {name}"


def test_failing_job_fails_after_backoff_limit(namespace: str) -> None:
    container = busybox("echo failing; exit 1", terminationMessagePolicy="FallbackToLogsOnError")
    apply(namespace, job("fails", container, backoff_limit=1))
    cond = wait_for(lambda: job_condition(namespace, "fails", "Failed"), 60, "job fails Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=fails")["items"]
    assert len(pods) == 2
    for p in pods:
        assert p["status"]["phase"] == "Failed"
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 1
        assert term["reason"] == "Error"
        assert term["message"] == "failing\n"


def test_pod_requesting_more_gpus_than_the_node_has_is_unschedulable(namespace: str) -> None:
    apply(namespace, pod("greedy", [busybox("true", resources={"limits": {"nvidia.com/gpu": 3}})]))

    def unschedulable() -> dict[str, Any] | None:
        p = get_pod(namespace, "greedy")
        for c in p.get("status", {}).get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable":
                return p
        return None

    p = wait_for(unschedulable, 30, "pod greedy Unschedulable")
    assert p["status"]["phase"] == "Pending"
    assert "nodeName" not in p["spec"]


def test_env_value_from_and_volumes_are_seen_by_the_process(namespace: str) -> None:
    kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=password=s3cr3t")
    kubectl(
        "create",
        "configmap",
        "settings",
        "-n",
        namespace,
        "--from-literal=mode=fast",
        "--from-literal=extra=1",
    )
    script = textwrap.dedent(
        """
        echo "env PASSWORD=$PASSWORD MODE=$MODE IP=$MY_IP NODE=$NODE NS=$NS PREFIXED=$CFG_extra"
        echo "secret-file=$(cat /etc/creds/password)"
        echo "config-file=$(cat /etc/settings/renamed)"
        echo "sub=$(cat /opt/mode.txt)"
        echo "host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT hostname=$HOSTNAME"
        touch /etc/creds/x 2>/dev/null || echo secret-volume-read-only
        touch / 2>/dev/null; echo wd=$(pwd)
        """
    )
    container = busybox(
        script,
        workingDir="/work/dir",
        env=[
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {
                "name": "ABSENT",
                "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}},
            },
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        envFrom=[{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
        volumeMounts=[
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
            {"name": "settings-all", "mountPath": "/opt/mode.txt", "subPath": "mode"},
        ],
    )
    volumes = [
        {"name": "creds", "secret": {"secretName": "creds"}},
        {
            "name": "settings",
            "configMap": {"name": "settings", "items": [{"key": "mode", "path": "renamed"}]},
        },
        {"name": "settings-all", "configMap": {"name": "settings"}},
    ]
    apply(namespace, pod("envs", [container], volumes=volumes))
    p = wait_phase(namespace, "envs", "Succeeded", "Failed")
    out = logs(namespace, "envs")
    ip = p["status"]["podIP"]
    assert ip.startswith(POD_CIDR.removesuffix("0.0/16"))
    assert p["status"]["hostIP"] == "127.0.0.1"
    assert f"env PASSWORD=s3cr3t MODE=fast IP={ip} NODE={NODE} NS={namespace} PREFIXED=1\n" in out
    assert "secret-file=s3cr3t\n" in out
    assert "config-file=fast\n" in out
    assert "sub=fast\n" in out
    assert "host=127.0.0.1:16443 hostname=envs\n" in out
    assert "secret-volume-read-only\n" in out
    assert "wd=/work/dir\n" in out
    assert p["status"]["phase"] == "Succeeded"


def test_init_containers_run_first_and_read_only_root_is_enforced(namespace: str) -> None:
    init = busybox("echo from-init > /data/file", volumeMounts=[{"name": "data", "mountPath": "/data"}])
    init["name"] = "prepare"
    main = busybox(
        "cat /data/file; touch /usr/x 2>/dev/null && echo root-writable || echo root-read-only; "
        "touch /data/ok && echo data-writable",
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
        securityContext={"readOnlyRootFilesystem": True},
    )
    apply(
        namespace, pod("ordered", [main], initContainers=[init], volumes=[{"name": "data", "emptyDir": {}}])
    )
    p = wait_phase(namespace, "ordered", "Succeeded", "Failed")
    assert p["status"]["phase"] == "Succeeded"
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert logs(namespace, "ordered", "-c", "main") == "from-init\nroot-read-only\ndata-writable\n"


def test_two_pods_listen_on_the_same_port_on_their_own_ips(namespace: str) -> None:
    server = textwrap.dedent(
        """
        import http.server, os
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = os.environ["HOSTNAME"].encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body)))
                self.end_headers(); self.wfile.write(body)
        http.server.HTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
        """
    )

    def web(name: str) -> dict[str, Any]:
        c = {
            "name": "web",
            "image": images.OPERATOR,
            "command": ["python", "-c", server],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        }
        return pod(name, [c], restartPolicy="Always")

    apply(namespace, web("web-a"), web("web-b"))

    def ready(name: str) -> dict[str, Any] | None:
        p = get_pod(namespace, name)
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions") or []}
        return p if conds.get("Ready") == "True" else None

    a = wait_for(lambda: ready("web-a"), 45, "web-a Ready")
    b = wait_for(lambda: ready("web-b"), 45, "web-b Ready")
    ip_a, ip_b = a["status"]["podIP"], b["status"]["podIP"]
    assert ip_a != ip_b
    for ip, name in ((ip_a, "web-a"), (ip_b, "web-b")):
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
            assert resp.read().decode() == name


def test_delete_sends_sigterm_and_the_pod_goes_away(namespace: str) -> None:
    with tempfile.TemporaryDirectory(prefix="nodeagent-test-") as host_dir:
        marker = Path(host_dir) / "marker"
        script = (
            'trap "echo got-sigterm > /host/marker; exit 143" TERM; echo started; '
            "while true; do sleep 0.2; done"
        )
        c = busybox(script, volumeMounts=[{"name": "host", "mountPath": "/host"}])
        apply(
            namespace,
            pod(
                "victim",
                [c],
                terminationGracePeriodSeconds=20,
                volumes=[{"name": "host", "hostPath": {"path": host_dir, "type": "Directory"}}],
            ),
        )
        wait_phase(namespace, "victim", "Running")
        wait_for(lambda: "started" in logs(namespace, "victim"), 15, "victim to log 'started'")
        kubectl("delete", "pod", "victim", "-n", namespace, "--wait=true", timeout=30)
        assert not exists("pod", "victim", "-n", namespace)
        assert marker.read_text() == "got-sigterm\n"


def test_unknown_image_shows_image_pull_errors(namespace: str) -> None:
    apply(namespace, pod("noimage", [{"name": "main", "image": "registry.example/nope:1"}]))

    def pull_error() -> dict[str, Any] | None:
        p = get_pod(namespace, "noimage")
        for cs in p.get("status", {}).get("containerStatuses") or []:
            waiting = cs.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
                return p
        return None

    p = wait_for(pull_error, 30, "noimage to report an image pull error")
    assert p["status"]["phase"] == "Pending"
    wait_for(
        lambda: (
            get_pod(namespace, "noimage")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "ImagePullBackOff"
        ),
        15,
        "ImagePullBackOff",
    )
    events = kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=noimage"
    ).stdout
    assert "Failed to pull image" in events


def test_projected_service_account_token_authenticates_as_the_pod_service_account(namespace: str) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "configmap", "visible", "-n", namespace, "--from-literal=k=v")
    kubectl("create", "role", "cm-reader", "-n", namespace, "--verb=get", "--resource=configmaps")
    kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        namespace,
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
    )
    script = textwrap.dedent(
        """
        import sys
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
        print("python", sys.executable)
        config.load_incluster_config()
        api = client.ApiClient()
        review = client.AuthenticationV1Api(api).create_self_subject_review({})
        print("user", review.status.user_info.username)
        ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
        core = client.CoreV1Api(api)
        print("configmap", core.read_namespaced_config_map("visible", ns).data["k"])
        try:
            core.list_namespaced_secret(ns)
            print("secrets allowed")
        except ApiException as exc:
            print("secrets", exc.status)
        """
    )
    c = {"name": "main", "image": images.OPERATOR, "command": ["python", "-c", script]}
    apply(namespace, pod("whoami", [c], serviceAccountName="reader"))
    p = wait_phase(namespace, "whoami", "Succeeded", "Failed")
    out = logs(namespace, "whoami")
    assert p["status"]["phase"] == "Succeeded", out
    assert "python /opt/venv/bin/python\n" in out  # the operator image's own interpreter
    assert f"user system:serviceaccount:{namespace}:reader\n" in out
    assert "configmap v\n" in out
    assert "secrets 403\n" in out


def test_deleting_an_owner_deletes_its_dependents(namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    uid = kubectl_json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    apply(namespace, dependent)
    apply(namespace, job("sleeper", busybox("sleep 300")))
    wait_for(
        lambda: any(
            p["status"].get("phase") == "Running"
            for p in kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=sleeper")["items"]
        ),
        45,
        "the sleeper job's pod to run",
    )
    kubectl("delete", "configmap", "owner", "-n", namespace)
    kubectl("delete", "job", "sleeper", "-n", namespace, "--cascade=background")
    wait_for(
        lambda: not exists("configmap", "dependent", "-n", namespace),
        30,
        "the dependent ConfigMap to be garbage-collected",
    )
    wait_for(
        lambda: not kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=sleeper")["items"],
        45,
        "the job's pods to be garbage-collected and stopped",
    )


def test_logs_follow_streams_until_the_container_exits(namespace: str) -> None:
    apply(namespace, pod("counter", [busybox("for i in 1 2 3 4 5; do echo line $i; sleep 0.5; done")]))
    wait_phase(namespace, "counter", "Running", "Succeeded")
    out = kubectl("logs", "-f", "-n", namespace, "counter", timeout=30).stdout
    assert out == "".join(f"line {i}\n" for i in range(1, 6))
    assert kubectl("logs", "-n", namespace, "counter", "--limit-bytes=6").stdout == "line 1"


def test_liveness_failure_restarts_the_container_in_place(namespace: str) -> None:
    c = busybox(
        "echo run; sleep 300",
        livenessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1},
    )
    apply(namespace, pod("unhealthy", [c], restartPolicy="Always", terminationGracePeriodSeconds=1))

    def restarted() -> dict[str, Any] | None:
        p = get_pod(namespace, "unhealthy")
        statuses = p["status"].get("containerStatuses") or [{}]
        return p if statuses[0].get("restartCount", 0) >= 1 else None

    p = wait_for(
        restarted,
        45,
        "the container to be restarted after failing its liveness probe",
    )
    last = p["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 143
    assert "run\n" in logs(namespace, "unhealthy", "--previous")


def test_active_deadline_fails_the_pod(namespace: str) -> None:
    apply(namespace, pod("slow", [busybox("sleep 300")], activeDeadlineSeconds=2))
    p = wait_phase(namespace, "slow", "Failed", timeout=30)
    assert p["status"]["reason"] == "DeadlineExceeded"


def test_on_failure_restarts_a_failed_container_until_it_succeeds(namespace: str) -> None:
    script = "if [ -e /state/failed-once ]; then echo second; else touch /state/failed-once; echo first; exit 7; fi"
    c = busybox(script, volumeMounts=[{"name": "state", "mountPath": "/state"}])
    apply(
        namespace, pod("flaky", [c], restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}])
    )
    p = wait_phase(namespace, "flaky", "Succeeded", "Failed")
    assert p["status"]["phase"] == "Succeeded"
    cs = p["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 7
    assert logs(namespace, "flaky") == "second\n"
    assert logs(namespace, "flaky", "--previous") == "first\n"


def test_kubelet_api_requires_the_api_servers_client_certificate(cluster: dict[str, str]) -> None:
    pki = Path(cluster["FTO_STATE_DIR"]) / "pki"
    url = f"https://127.0.0.1:{PORTS.kubelet}"

    def get(path: str, cert: str | None) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.check_hostname = False
        if cert:
            ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
        try:
            with urllib.request.urlopen(url + path, context=ctx, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert get("/healthz", None) == (200, "ok")
    assert get("/containerLogs/default/x/y", None)[0] == 401
    # A node's own certificate is signed by the same CA but may not read other pods' logs.
    assert get("/containerLogs/default/x/y", "node")[0] == 403
    status, body = get("/containerLogs/default/x/y", "apiserver-kubelet-client")
    assert status == 404
    assert "not found" in body


@pytest.mark.serial
def test_agent_crash_and_restart_adopts_running_pods(namespace: str) -> None:
    from localcluster import cli, procs

    script = 'trap "echo got-sigterm; exit 143" TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done'
    apply(namespace, pod("survivor", [busybox(script)]))
    before = wait_phase(namespace, "survivor", "Running")
    wait_for(lambda: "tick 2" in logs(namespace, "survivor"), 15, "survivor to tick")
    pid = procs.running_pid("nodeagent")
    assert pid is not None
    try:
        # A crash, not a stop: the containers must outlive the agent.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not procs.alive(pid), 10, "the node agent to die")
    finally:
        cli.start_node_agent()
    after = wait_phase(namespace, "survivor", "Running")
    assert after["status"]["podIP"] == before["status"]["podIP"]
    cs = after["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 0
    assert (
        cs["state"]["running"]["startedAt"]
        == before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    )
    # The restarted agent may still be binding its port: "Ready" was left over from the old one.
    count = wait_for(
        lambda: len(logs(namespace, "survivor").splitlines()), 20, "logs from the restarted agent"
    )
    wait_for(
        lambda: len(logs(namespace, "survivor").splitlines()) > count, 10, "the adopted pod to keep logging"
    )
    kubectl("delete", "pod", "survivor", "-n", namespace, "--wait=true", timeout=30)
    assert not exists("pod", "survivor", "-n", namespace)


# ---------------------------------------------------------------------------------------------
# persistentVolumeClaim volumes: the real PV controller binds the claim, the agent mounts the PV.


def host_path_pv(name: str, path: Path, namespace: str, claim: str) -> dict[str, Any]:
    """A hostPath PV reserved for one claim (claimRef), so no other test's claim can take it."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany", "ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "hostPath": {"path": str(path), "type": "Directory"},
        },
    }


def claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "resources": {"requests": {"storage": "1Mi"}},
        },
    }


def claim_phase(namespace: str, name: str) -> str:
    return str(kubectl_json("get", "pvc", name, "-n", namespace).get("status", {}).get("phase"))


def pod_events(namespace: str, name: str) -> list[dict[str, Any]]:
    items = kubectl_json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    return list(items)


def test_claim_is_mounted_from_its_bound_pv_read_only_as_asked(namespace: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text('{"model_type": "llama"}\n')
    pv = f"{namespace}-models"
    kubectl("apply", "-f", "-", input=json.dumps(host_path_pv(pv, models, namespace, "models")))
    try:
        apply(namespace, claim("models"))
        wait_for(lambda: claim_phase(namespace, "models") == "Bound", 30, "the PV controller to bind models")
        assert kubectl_json("get", "pvc", "models", "-n", namespace)["spec"]["volumeName"] == pv
        script = textwrap.dedent(
            """
            echo "model=$(cat /mnt/base-model/tiny/config.json)"
            touch /mnt/base-model/claim-ro 2>/dev/null && echo claim-ro-writable || echo claim-ro-refused
            touch /mnt/mount-ro/mount-ro 2>/dev/null && echo mount-ro-writable || echo mount-ro-refused
            echo "sub=$(cat /mnt/sub/config.json)"
            touch /mnt/rw/written && echo rw-writable
            """
        )
        container = busybox(
            script,
            volumeMounts=[
                {"name": "model", "mountPath": "/mnt/base-model"},
                {"name": "shared", "mountPath": "/mnt/mount-ro", "readOnly": True},
                {"name": "shared", "mountPath": "/mnt/sub", "subPath": "tiny", "readOnly": True},
                {"name": "shared", "mountPath": "/mnt/rw"},
            ],
        )
        volumes = [
            {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            {"name": "shared", "persistentVolumeClaim": {"claimName": "models"}},
        ]
        apply(namespace, pod("reader", [container], volumes=volumes))
        p = wait_phase(namespace, "reader", "Succeeded", "Failed")
        out = logs(namespace, "reader")
        assert p["status"]["phase"] == "Succeeded", out
        assert out == (
            'model={"model_type": "llama"}\n'
            "claim-ro-refused\n"
            "mount-ro-refused\n"
            'sub={"model_type": "llama"}\n'
            "rw-writable\n"
        )
        # The PV's directory itself was mounted (not a copy): the one writable mount wrote through.
        assert sorted(p.name for p in models.iterdir()) == ["tiny", "written"]
    finally:
        kubectl("delete", "namespace", namespace, "--wait=true", timeout=120, check=False)
        kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_missing_then_unbound_claim_keeps_the_pod_creating_until_it_binds(
    namespace: str, tmp_path: Path
) -> None:
    # nodeName set: the scheduler (which would hold the pod back) is bypassed, as with a static pod,
    # so the agent itself meets the claim that is not there yet.
    container = busybox(
        "cat /data/hello.txt", volumeMounts=[{"name": "data", "mountPath": "/data", "readOnly": True}]
    )
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "late"}}]
    apply(namespace, pod("waiter", [container], volumes=volumes, nodeName=NODE))

    def failed_mount(needle: str) -> dict[str, Any] | None:
        for e in pod_events(namespace, "waiter"):
            if e["reason"] == "FailedMount" and needle in e["message"]:
                return e
        return None

    e = wait_for(lambda: failed_mount('persistentvolumeclaim "late" not found'), 30, "FailedMount: not found")
    assert e["type"] == "Warning"
    assert f"PVC {namespace}/late" in e["message"]
    p = get_pod(namespace, "waiter")
    assert p["status"]["phase"] == "Pending"
    waiting = p["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ContainerCreating"

    apply(namespace, claim("late"))  # no PV yet: the claim stays Pending
    wait_for(lambda: failed_mount("PVC is not bound"), 40, "FailedMount: not bound")
    assert get_pod(namespace, "waiter")["status"]["phase"] == "Pending"

    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("bound at last\n")
    pv = f"{namespace}-late"
    kubectl("apply", "-f", "-", input=json.dumps(host_path_pv(pv, data, namespace, "late")))
    try:
        wait_for(lambda: claim_phase(namespace, "late") == "Bound", 30, "the PV controller to bind late")
        p = wait_phase(namespace, "waiter", "Succeeded", "Failed", timeout=60)
        assert p["status"]["phase"] == "Succeeded"
        assert logs(namespace, "waiter") == "bound at last\n"
    finally:
        kubectl("delete", "namespace", namespace, "--wait=true", timeout=120, check=False)
        kubectl("delete", "pv", pv, "--wait=false", check=False)
