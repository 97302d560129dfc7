"""What rankserve changes in the Ray processes it runs applies to this Ray exactly as intended:
HAProxy's listeners on loopback, its socket private, its limits and read time-out, TLS when asked,
gRPC servers on the node's own address."""

from __future__ import annotations

import re

import pytest
from ray.serve._private import haproxy

from serving import ray_hardening
from serving.config import ConfigError, Settings
from serving.ray_hardening import IngressLimits, harden_haproxy_template
from serving.ray_runtime import Ingress


def test_every_change_applies_to_ray_s_template() -> None:
    t = harden_haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE, IngressLimits(max_conn_per_replica=7,
                                max_queue_per_replica=3, queue_timeout_ms=250, read_timeout_s=4))
    assert "mode 666" not in t and "mode 600 level admin" in t
    assert re.search(r"frontend prometheus\n    bind 127\.0\.0\.1:", t)
    assert re.search(r"listen stats\n  bind 127\.0\.0\.1:", t)
    assert "timeout http-request 4s" in t and "timeout queue 250ms" in t
    assert "option http-buffer-request" in t
    assert t.count("maxconn 7 maxqueue 3") == 3  # the HTTP, gRPC and gRPC fallback backends
    assert "ssl crt" not in t and "ListApplications is unavailable" in t and "grpc-status 7" in t


def test_tls_puts_the_certificate_on_both_api_listeners() -> None:
    t = harden_haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE, IngressLimits(tls_cert_file="/etc/rs/api.pem"))
    assert "{{ config.frontend_port }} ssl crt /etc/rs/api.pem alpn h2,http/1.1" in t
    assert "{{ config.grpc_frontend_port }} ssl crt /etc/rs/api.pem alpn h2 proto h2" in t


def test_another_template_fails_loudly_rather_than_running_without_the_limits() -> None:
    with pytest.raises(RuntimeError, match="expected 1 occurrence"):
        harden_haproxy_template(haproxy.HAPROXY_CONFIG_TEMPLATE.replace("mode 666", "mode 644"), IngressLimits())


def test_grpc_servers_bind_the_node_address_not_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_hardening, "_node_ip", lambda: "10.1.2.3")
    assert ray_hardening._node_address("[::]:0") == "10.1.2.3:0"
    assert ray_hardening._node_address("[::]:9000") == "10.1.2.3:9000"
    assert ray_hardening._node_address("127.0.0.1:9000") == "127.0.0.1:9000"


def test_haproxy_never_lets_in_more_than_a_replica_admits() -> None:
    s = Settings(max_queued_requests=20, ingress_max_conn_per_replica=64)
    assert Ingress.from_settings(s).limits.max_conn_per_replica == 20


def test_api_beyond_loopback_needs_auth_said_and_tls_needs_haproxy() -> None:
    with pytest.raises(ConfigError, match="RANKSERVE_AUTH=keys"):
        Settings.from_env({"RANKSERVE_HOST": "0.0.0.0"})
    assert Settings.from_env({"RANKSERVE_HOST": "0.0.0.0", "RANKSERVE_AUTH": "off"}).auth_mode == "off"
    assert Settings.from_env({"RANKSERVE_HOST": "127.0.0.1"}).auth_mode == "off"
    with pytest.raises(ConfigError, match="haproxy"):
        Settings.from_env({"RANKSERVE_TLS_CERT_FILE": "/x.pem", "RANKSERVE_INGRESS": "direct"})


def test_haproxy_s_own_answer_is_the_api_s_503_with_retry_after(tmp_path) -> None:  # noqa: ANN001
    class _Cfg:
        error_file_path = str(tmp_path / "500.http")

    class _Manager:
        cfg = _Cfg()

        def _initialize_directories_and_error_files(self) -> None:
            with open(self.cfg.error_file_path, "w") as f:
                f.write("HTTP/1.1 500 Internal Server Error\r\n\r\nInternal Server Error")

    ray_hardening._own_error_page(_Manager)
    _Manager()._initialize_directories_and_error_files()
    page = (tmp_path / "500.http").read_bytes().decode()
    head, body = page.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 503") and "Retry-After: 1" in head
    assert f"Content-Length: {len(body.encode())}" in head and '"code": "unavailable"' in body
    assert hasattr(haproxy.HAProxyApi, "_initialize_directories_and_error_files")  # what the hook wraps


def test_serve_s_grpc_servers_ask_grpc_not_to_share_their_port_in_a_form_grpc_reads(monkeypatch) -> None:  # noqa: ANN001
    """Serve passes ("grpc.so_reuseport", "0"); the hook hands gRPC the integer it reads."""
    from ray.serve._private import grpc_util

    seen: list[object] = []
    monkeypatch.setattr(grpc_util.gRPCGenericServer, "__init__",
                        lambda self, factory, *, extra_options=None: seen.extend(extra_options or []))
    ray_hardening._own_grpc_ports()
    grpc_util.gRPCGenericServer(lambda: None, extra_options=[("grpc.so_reuseport", "0"), ("x", "y")])
    assert seen == [("grpc.so_reuseport", 0), ("x", "y")]
