"""docker-compose.multi-region.yml cannot run here (no Docker engine); its structure is
checked instead: every service the topology needs, commands our CLI accepts, ports,
mounts (each region sees only its own secrets), env, and a config that validates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import build_parser, main
from router.config import load_file

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.multi-region.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONFIG = load_file(ROOT / "config" / "compose.yaml")
TABLE = CONFIG.table


def mounts(service: str) -> set[str]:
    return set(SERVICES[service].get("volumes", []))


def test_mounted_config_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(ROOT / "config" / "compose.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_every_part_of_the_topology_has_a_service() -> None:
    want = {"consul", "otel-collector", "config-push", "router-1", "router-2"}
    want |= {f"temporal-{c}" for c in TABLE.clusters} | {f"worker-{c}" for c in TABLE.clusters}
    want |= {f"codec-{r}" for r in TABLE.regions}
    assert want <= set(SERVICES), sorted(want - set(SERVICES))
    assert SERVICES["consul"]["image"].startswith("hashicorp/consul:")
    assert SERVICES["otel-collector"]["image"].startswith("otel/opentelemetry-collector")
    assert (ROOT / "deploy" / "otel-collector.yaml").exists()


@pytest.mark.parametrize("cluster", sorted(TABLE.clusters))
def test_cluster_endpoints_match_their_temporal_services(cluster: str) -> None:
    spec = TABLE.clusters[cluster]
    host, port = spec.endpoint.rsplit(":", 1)
    assert host == f"temporal-{cluster}"
    cmd = SERVICES[host]["command"]
    assert cmd[:2] == ["server", "start-dev"] and cmd[cmd.index("--port") + 1] == port
    assert cmd[cmd.index("--ip") + 1] == "0.0.0.0"
    served = {cmd[i + 1] for i, a in enumerate(cmd) if a == "--namespace"}
    assert set(spec.namespaces) <= served


MERIDIAN_SERVICES = [n for n, s in SERVICES.items() if s.get("image", "").startswith("meridian")
                     and "entrypoint" not in s]  # fmt: skip


@pytest.mark.parametrize("service", sorted(MERIDIAN_SERVICES))
def test_commands_are_valid_meridian_invocations(service: str) -> None:
    args = build_parser().parse_args(SERVICES[service]["command"])
    assert args.func is not None
    assert "./config:/etc/meridian:ro" in mounts(service)
    env = {**COMPOSE["x-meridian"]["environment"], **SERVICES[service].get("environment", {})}
    assert (
        env["MERIDIAN_HOME"] and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    )


def test_routers_are_replicas_sharing_consul() -> None:
    ids, ports = set(), set()
    for name in ("router-1", "router-2"):
        svc = SERVICES[name]
        args = build_parser().parse_args(svc["command"])
        assert args.consul == "consul:8500" and args.host == "0.0.0.0"
        ids.add(args.replica_id)
        ports.add(svc["ports"][0].split(":")[0])
        assert svc["depends_on"]["consul"]["condition"] == "service_healthy"
        assert svc["depends_on"]["config-push"]["condition"] == "service_completed_successfully"
        for region in TABLE.regions:
            assert f"./.meridian/compose/keys/{region}.json:/keys/{region}.json:ro" in mounts(name)
    assert len(ids) == 2 and len(ports) == 2
    push = build_parser().parse_args(SERVICES["config-push"]["command"])
    assert push.consul == "consul:8500" and push.file == "/etc/meridian/compose.yaml"


@pytest.mark.parametrize("region", sorted(TABLE.regions))
def test_region_services_see_only_their_own_secrets(region: str) -> None:
    codec = SERVICES[f"codec-{region}"]
    args = build_parser().parse_args(codec["command"])
    assert args.region == region and args.listen == "0.0.0.0:8080"
    assert TABLE.regions[region].codec_server == f"codec-{region}:8080"
    for name in [f"codec-{region}", *(f"worker-{c.name}" for c in TABLE.regions[region].clusters)]:
        secrets = {m for m in mounts(name) if "/keys/" in m}
        assert secrets, name
        assert all(f"/keys/{region}." in m for m in secrets), (name, secrets)


# -- Prometheus and Grafana -------------------------------------------------------------

DEPLOY = ROOT / "deploy"


def _bind_mounts(service: str) -> dict[str, str]:
    """Container path -> host path (./...), for the service's bind mounts."""
    out = {}
    for m in mounts(service):
        host, container, *_ = m.split(":")
        if host.startswith("./"):
            out[container] = host
    return out


def test_every_mounted_deploy_file_exists() -> None:
    for name in SERVICES:
        for host in _bind_mounts(name).values():
            if host.startswith("./deploy/"):
                assert (ROOT / host).exists(), f"{name} mounts {host}, which does not exist"


def test_prometheus_scrapes_every_router_and_codec_server() -> None:
    prom = SERVICES["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v2.")  # the major the promtool checks
    binds = _bind_mounts("prometheus")
    config_path = next(
        a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file=")
    )
    config = yaml.safe_load((ROOT / binds[config_path]).read_text())
    # The rule files sit beside the config, where compose mounts alerts.yaml too.
    config_dir = config_path.rsplit("/", 1)[0]
    for rules in config["rule_files"]:
        assert binds[f"{config_dir}/{rules}"] == f"./deploy/prometheus/{rules}"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "meridian-router"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    wanted = set()
    for name in ("router-1", "router-2"):
        args = build_parser().parse_args(SERVICES[name]["command"])
        assert args.http_host == "0.0.0.0" and args.http_port, name
        # Worker i of a replica serves on --http-port + i (router.workers).
        wanted |= {f"{name}:{args.http_port + i}" for i in range(args.workers or 1)}
        assert prom["depends_on"][name]["condition"] == "service_started"
    assert targets == wanted
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Each region's codec server serves its own /metrics on its --listen port.
    (codec_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "meridian-codec-server"]
    codec_targets = {t for sc in codec_job["static_configs"] for t in sc["targets"]}
    codecs = [n for n, s in SERVICES.items() if s.get("command", [""])[0] == "codec-server"]
    assert len(codecs) == 3, codecs
    wanted_codecs = set()
    for name in codecs:
        args = build_parser().parse_args(SERVICES[name]["command"])
        assert not args.no_metrics, name
        wanted_codecs.add(f"{name}:{args.listen.rpartition(':')[2]}")
    assert codec_targets == wanted_codecs


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard() -> None:
    graf = SERVICES["grafana"]
    assert graf["image"].startswith("grafana/grafana:")
    binds = _bind_mounts("grafana")
    provisioning = {c: h for c, h in binds.items() if c.startswith("/etc/grafana/provisioning/")}
    assert set(provisioning) == {
        "/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards",
    }  # fmt: skip
    (source,) = yaml.safe_load(
        (
            ROOT / provisioning["/etc/grafana/provisioning/datasources"] / "prometheus.yaml"
        ).read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    prom_port = SERVICES["prometheus"]["ports"][0].split(":")[-1]
    assert source["url"] == f"http://prometheus:{prom_port}"
    (provider,) = yaml.safe_load(
        (ROOT / provisioning["/etc/grafana/provisioning/dashboards"] / "meridian.yaml").read_text()
    )["providers"]
    dashboards = {c: h for c, h in binds.items() if c.startswith(provider["options"]["path"] + "/")}
    assert list(dashboards.values()) == ["./deploy/grafana/meridian.json"]
    assert graf["depends_on"]["prometheus"]["condition"] == "service_started"
