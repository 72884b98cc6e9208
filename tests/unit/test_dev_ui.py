"""`meridian dev --ui` without servers: which port each cluster's Web UI takes, how the
dev servers and codec servers are told about each other, what the summary prints, and
what `meridian codec-server --dev-loopback-ui` accepts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from router.cli import build_parser
from router.cli.run import _dev_loopback_origins, _print_summary
from router.config import load
from router.config.settings import ResolvedConfig
from router.devstack import DevStack, check_ports, ui_origins, ui_ports
from router.errors import MeridianError, StackError
from tests.helpers import default_doc, free_port, with_free_ports, write_config

CONFIG = load()  # the embedded default: clusters on 7233..7238, codec servers on 8091..8093


def test_ui_ports_follow_temporal_default_or_a_base() -> None:
    assert ui_ports(CONFIG) == {
        "us-east-a": 8233, "us-east-b": 8234, "eu-west-a": 8235, "eu-west-b": 8236,
        "ap-southeast-a": 8237, "ap-southeast-b": 8238,
    }  # fmt: skip
    assert list(ui_ports(CONFIG, 9000).values()) == list(range(9000, 9006))
    with pytest.raises(StackError, match="65536 is not a TCP port; choose --ui-port-base"):
        ui_ports(CONFIG, 65531)


@pytest.mark.parametrize(
    ("host", "origins"),
    [
        ("127.0.0.1", ["http://127.0.0.1:8233", "http://localhost:8233"]),
        ("localhost", ["http://localhost:8233", "http://127.0.0.1:8233"]),
        ("::1", ["http://[::1]:8233"]),
        ("127.0.0.2", ["http://127.0.0.2:8233"]),
    ],
)
def test_ui_origins(host: str, origins: list[str]) -> None:
    assert ui_origins(host, 8233) == origins


def small_config(tmp_path: Path) -> ResolvedConfig:
    return load(write_config(tmp_path / "c.yaml", with_free_ports(default_doc())))


def test_a_taken_ui_port_is_named(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ui = {"eu-west-b": taken}
        with pytest.raises(StackError, match=rf"port {taken} is already in use: needed by Web UI"):
            check_ports(config, "127.0.0.1", free_port(), ui=ui)
        check_ports(config, "127.0.0.1", free_port())  # without --ui the port is not needed


def test_a_ui_port_on_another_needed_port_is_refused(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    codec = config.table.regions["us-east"].codec_server or ""
    ui = {"eu-west-a": int(codec.rsplit(":", 1)[1])}
    with pytest.raises(
        StackError, match=r"wanted twice: by Web UI of cluster eu-west-a .* and by codec"
    ):
        check_ports(config, "127.0.0.1", free_port(), ui=ui)


def stack(tmp_path: Path, ui: dict[str, int] | None) -> DevStack:
    return DevStack(CONFIG, tmp_path / "c.yaml", home=tmp_path, keys_dir=tmp_path / "k", ui=ui)


def test_each_ui_decodes_through_its_regions_codec_server(tmp_path: Path) -> None:
    clusters = CONFIG.table.clusters
    headless = stack(tmp_path, None)
    assert headless._ui_args(clusters["eu-west-a"]) == ["--headless"]
    assert headless.ui_urls == {} and headless._ui_origins_of("eu-west") == []
    with_ui = stack(tmp_path, ui_ports(CONFIG))
    assert with_ui._ui_args(clusters["eu-west-b"]) == [
        "--ui-port", "8236", "--ui-disable-news-fetch",
        "--ui-codec-endpoint", "http://127.0.0.1:8092",
    ]  # fmt: skip
    assert with_ui.ui_urls["eu-west-b"] == "http://127.0.0.1:8236"
    # A codec server accepts its own region's UIs, no other region's.
    assert with_ui._ui_origins_of("eu-west") == [
        "http://127.0.0.1:8235", "http://localhost:8235",
        "http://127.0.0.1:8236", "http://localhost:8236",
    ]  # fmt: skip


def test_summary_shows_the_uis_only_with_ui(tmp_path: Path) -> None:
    lines: list[str] = []
    _print_summary(lines.append, CONFIG, "127.0.0.1", 50051, {})
    assert "web ui" not in lines[0] and not any("Web UI" in line for line in lines)
    lines.clear()
    _print_summary(
        lines.append, CONFIG, "127.0.0.1", 50051, stack(tmp_path, ui_ports(CONFIG)).ui_urls
    )
    header, _, first, *_ = lines[0].splitlines()
    assert header.split()[-2:] == ["web", "ui"]
    assert first.split()[0:3] == ["us", "us-east", "us-east-a"] and first.endswith(
        "http://127.0.0.1:8233"
    )
    url = "http://127.0.0.1:8233/namespaces/us-east/workflows/<workflow id>"
    assert lines[1].startswith(f"Web UI: open a workflow at {url}")
    assert "without a token (development mode, loopback only" in lines[1]


def test_dev_ui_options_parse() -> None:
    args = build_parser().parse_args(["dev", "--ui", "--ui-port-base", "9000"])
    assert args.ui and args.ui_port_base == 9000
    assert not build_parser().parse_args(["dev"]).ui
    codec = build_parser().parse_args(["codec-server", "--region", "eu-west"])
    assert codec.dev_loopback_ui == []  # off unless asked for


def test_dev_loopback_ui_needs_loopback_origins_and_listen_address() -> None:
    ui = "http://127.0.0.1:8235"
    assert _dev_loopback_origins([], "0.0.0.0:8092", "0.0.0.0") == []
    assert _dev_loopback_origins([ui, ui], "127.0.0.1:8092", "127.0.0.1") == [ui]
    assert _dev_loopback_origins([ui], "[::1]:8092", "[::1]") == [ui]
    assert _dev_loopback_origins([ui], "localhost:8092", "localhost") == [ui]
    with pytest.raises(MeridianError, match=r"must listen on loopback, not 0\.0\.0\.0:8092"):
        _dev_loopback_origins([ui], "0.0.0.0:8092", "0.0.0.0")
    with pytest.raises(MeridianError, match=r"'http://ui\.example:8235' is not http://<loopback"):
        _dev_loopback_origins(["http://ui.example:8235"], "127.0.0.1:8092", "127.0.0.1")
