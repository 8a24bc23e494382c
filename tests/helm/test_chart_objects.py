"""The properties of the rendered objects that a safe rollout depends on."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest

from tests.helm import checks


def _selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", checks.VALUES_FILES)
def test_probes_ask_healthz_and_readyz_on_the_gateway_port(name: str, release_of: Any) -> None:
    release: checks.Release = release_of(name)
    container = release.container
    port = container["ports"][0]
    assert port == {"name": "http", "containerPort": int(release.settings["GATEWAY_PORT"]), "protocol": "TCP"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_probes_follow_the_port_setting() -> None:
    release = checks.render(checks.with_api_keys({"gateway": {"port": 9090}}))
    assert release.container["ports"][0]["containerPort"] == 9090
    assert release.settings["GATEWAY_PORT"] == "9090"
    service_port = release.one("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"


@pytest.mark.parametrize("name", checks.VALUES_FILES)
def test_security_context_is_locked_down(name: str, release_of: Any) -> None:
    release: checks.Release = release_of(name)
    pod = release.pod["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int)
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = release.container["securityContext"]
    assert container["runAsNonRoot"] is True
    assert isinstance(container["runAsUser"], int)
    assert container["runAsUser"] > 0
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", checks.VALUES_FILES)
def test_tmp_is_a_writable_emptydir(name: str, release_of: Any) -> None:
    release: checks.Release = release_of(name)
    mounts = {m["mountPath"]: m for m in release.container["volumeMounts"]}
    assert mounts["/tmp"].get("readOnly", False) is False
    volumes = {v["name"]: v for v in release.pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


@pytest.mark.parametrize(
    ("values", "grace"),
    [
        ({}, 38),  # 5 s preStop + 3 s accepting after SIGTERM + 20 s for requests in flight, + 10
        ({"gateway": {"shutdownTimeoutSeconds": 45}}, 63),
        ({"gateway": {"shutdownGraceSeconds": 10}}, 45),
        ({"gateway": {"shutdownTimeoutSeconds": 2.5, "shutdownGraceSeconds": 0.5}, "preStopSleepSeconds": 0}, 14),
        ({"terminationGracePeriodSeconds": 90}, 90),
    ],
)
def test_grace_period_outlasts_the_shutdown_timeout(values: dict[str, Any], grace: int) -> None:
    release = checks.render(checks.with_api_keys(values))
    pod = release.pod
    assert pod["terminationGracePeriodSeconds"] == grace
    draining = float(release.settings["GATEWAY_SHUTDOWN_GRACE_SECONDS"])
    shutdown = float(release.settings["GATEWAY_SHUTDOWN_TIMEOUT_SECONDS"])
    sleep = (
        int(release.container["lifecycle"]["preStop"]["exec"]["command"][1]) if "lifecycle" in release.container else 0
    )
    assert pod["terminationGracePeriodSeconds"] > sleep + draining + shutdown


def test_checksums_roll_the_pods_when_settings_or_secrets_change(inline: checks.Release) -> None:
    annotations = inline.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(inline.template("configmap.yaml").encode()).hexdigest()

    values = checks.values_file("inline-secrets")
    debug = checks.render({**values, "logging": {"level": "debug"}})
    moved = checks.render({**values, "redis": {"url": "redis://elsewhere:6379/0"}})
    debug_annotations = debug.deployment["spec"]["template"]["metadata"]["annotations"]
    moved_annotations = moved.deployment["spec"]["template"]["metadata"]["annotations"]
    assert debug_annotations["checksum/config"] != annotations["checksum/config"]
    assert debug_annotations["checksum/secret"] == annotations["checksum/secret"]
    assert moved_annotations["checksum/secret"] != annotations["checksum/secret"]


def test_new_api_keys_reach_the_pods_without_rolling_them(inline: checks.Release) -> None:
    """The gateway re-reads its mounted key file when the Secret changes: new keys alone restart nothing."""
    values = checks.values_file("inline-secrets")
    rotated = checks.render({**values, "apiKeys": {"content": "[]"}})
    assert rotated.one("Secret")["stringData"]["api-keys"] == "[]"
    assert rotated.one("Secret") != inline.one("Secret")
    assert rotated.deployment["spec"]["template"] == inline.deployment["spec"]["template"]


def test_pods_spread_over_zones_and_nodes(production: checks.Release) -> None:
    constraints = production.pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    labels = production.deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in constraints:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert _selector_matches(constraint["labelSelector"]["matchLabels"], labels)


def test_service_account_token_is_never_mounted(default: checks.Release) -> None:
    account = default.one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert default.pod["automountServiceAccountToken"] is False
    assert default.pod["serviceAccountName"] == account["metadata"]["name"]


def test_service_selects_the_pods(production: checks.Release) -> None:
    service = production.one("Service")
    labels = production.deployment["spec"]["template"]["metadata"]["labels"]
    assert _selector_matches(service["spec"]["selector"], labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_capillary_credentials_come_from_an_existing_secret(production: checks.Release) -> None:
    for variable in ("CAPILLARY_CLIENT_KEY", "CAPILLARY_CLIENT_SECRET"):
        ref = production.env(variable)["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "pos-coupon-gateway-capillary", "key": variable}
    assert production.env("REDIS_URL")["valueFrom"]["secretKeyRef"] == {
        "name": "pos-coupon-gateway-redis",
        "key": "url",
    }
    assert production.all("Secret") == []  # the chart keeps no secret of its own
    assert "CAPILLARY_CLIENT_SECRET" not in production.settings


def test_inline_credentials_go_to_the_charts_secret_never_the_configmap(inline: checks.Release) -> None:
    secret = inline.one("Secret")
    data = secret["stringData"]
    assert set(data) == {
        "CAPILLARY_CLIENT_KEY",
        "CAPILLARY_CLIENT_SECRET",
        "CAPILLARY_TILL_USERNAME",
        "CAPILLARY_TILL_PASSWORD",
        "REDIS_URL",
        "CACHE_URL",
        "api-keys",
    }
    # basic auth: the till's credentials reach the container, the OAuth client's do not
    for variable in ("CAPILLARY_TILL_USERNAME", "CAPILLARY_TILL_PASSWORD", "REDIS_URL", "CACHE_URL"):
        ref = inline.env(variable)["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": variable}
    assert "CAPILLARY_CLIENT_KEY" not in inline.env_names()
    config = inline.template("configmap.yaml")
    for value in data.values():
        assert value.strip() not in config


def test_api_keys_file_is_mounted_read_only_and_named_in_the_environment(inline: checks.Release) -> None:
    assert inline.env("GATEWAY_API_KEYS_FILE")["value"] == "/etc/pos-coupon-gateway/api-keys/api-keys"
    mount = next(m for m in inline.container["volumeMounts"] if m["name"] == "api-keys")
    # the whole volume, never a subPath (which the kubelet would not update when the Secret changes)
    assert mount == {"name": "api-keys", "mountPath": "/etc/pos-coupon-gateway/api-keys", "readOnly": True}
    volume = next(v for v in inline.pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == inline.one("Secret")["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "api-keys", "path": "api-keys"}]

    existing = checks.render({"apiKeys": {"existingSecret": "gateway-keys", "existingSecretKey": "k"}})
    volume = next(v for v in existing.pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "gateway-keys"
    assert volume["secret"]["items"] == [{"key": "k", "path": "api-keys"}]
    assert existing.all("Secret") == []


def test_hpa_and_pdb_exist_when_enabled(production: checks.Release, default: checks.Release) -> None:
    assert default.all("HorizontalPodAutoscaler") == []
    assert default.all("PodDisruptionBudget") == []
    hpa = production.one("HorizontalPodAutoscaler")
    deployment = production.deployment
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    pdb = production.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert _selector_matches(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


def test_several_replicas_run_only_with_redis() -> None:
    helm = checks.helm()
    with pytest.raises(helm.HelmError, match="need Redis"):
        checks.render(checks.with_api_keys({"replicaCount": 2}))
    with pytest.raises(helm.HelmError, match="need Redis"):
        checks.render(checks.with_api_keys({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2}}))
    one = checks.with_api_keys({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 1}})
    assert checks.render(one).all("Deployment")
    shared = checks.render(
        checks.with_api_keys({"replicaCount": 2, "redis": {"existingSecret": "redis", "existingSecretKey": "url"}})
    )
    assert shared.deployment["spec"]["replicas"] == 2


def test_rollout_strategy_never_runs_two_in_memory_ledgers(default: checks.Release, production: checks.Release) -> None:
    assert default.deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert production.deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
    }


def test_sandbox_mode_runs_the_embedded_capillary(release_of: Any) -> None:
    release: checks.Release = release_of("sandbox")
    assert release.container["args"] == ["serve", "--sandbox"]
    assert not {n for n in release.env_names() if n.startswith(("CAPILLARY_CLIENT", "CAPILLARY_TILL"))}
    assert "SANDBOX MODE" in release.notes


def test_production_container_runs_serve(production: checks.Release) -> None:
    assert production.container["args"] == ["serve"]
    assert "command" not in production.container  # the image's ENTRYPOINT: coupon-gateway


def test_image_defaults_to_the_app_version_and_a_digest_pins_it(default: checks.Release) -> None:
    assert default.container["image"] == "pos-coupon-gateway:0.1.0"
    digest = "sha256:" + "a" * 64
    pinned = checks.render(
        checks.with_api_keys({"image": {"repository": "r.example/pcg", "tag": "x", "digest": digest}})
    )
    assert pinned.container["image"] == f"r.example/pcg@{digest}"


def test_ingress_exposes_only_the_pos_api(production: checks.Release) -> None:
    ingress = production.one("Ingress")
    (rule,) = ingress["spec"]["rules"]
    paths = {p["path"] for p in rule["http"]["paths"]}
    assert paths == {"/v1", "/openapi.yaml"}
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {
            "name": production.one("Service")["metadata"]["name"],
            "port": {"name": "http"},
        }
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_resources_are_requested(production: checks.Release) -> None:
    resources = production.container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_grace_rounding_uses_whole_seconds() -> None:
    release = checks.render(
        checks.with_api_keys({"gateway": {"shutdownTimeoutSeconds": 20.2, "shutdownGraceSeconds": 1.5}})
    )
    assert release.pod["terminationGracePeriodSeconds"] == 5 + math.ceil(1.5) + math.ceil(20.2) + 10
