"""The fault campaign's own parts: private services configured as services.sh, and its counting.

The campaign itself (`make chaos`) runs for minutes and is not part of the suite.
"""
from __future__ import annotations

import shutil

import pytest

from chaos.measure import provider_duplicates
from chaos.services import SHARED_PORTS, Redis, ServiceError, read_services_sh, settings_of, substitute
from sandbox.devstack import free_port


def test_server_config_is_read_from_services_sh_with_only_ports_and_dirs_replaced(tmp_path):
    config = read_services_sh()
    redis = Redis(config, tmp_path / "redis", port=26379)

    assert "port 26379" in redis.conf and "16379" not in redis.conf
    assert f"dir {tmp_path}/redis/data" in redis.conf
    pg = substitute(config.pg_conf, {"HOST": "127.0.0.1", "PG_PORT": "25432"})
    assert "port = 25432" in pg and "15432" not in pg
    # Whatever durability services.sh chooses reaches the private cluster unchanged.
    fixed = [line for line in settings_of(config.pg_conf) if "$" not in line]
    assert fixed and all(line in settings_of(pg) for line in fixed)


def test_a_variable_the_harness_does_not_know_is_an_error_not_an_empty_string():
    with pytest.raises(ServiceError, match=r"\$NEW_KNOB"):
        substitute("maxmemory $NEW_KNOB", {})


def test_the_shared_ports_are_refused(tmp_path):
    with pytest.raises(ServiceError, match="shared services"):
        Redis(read_services_sh(), tmp_path, port=sorted(SHARED_PORTS)[0]).start()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_private_redis_runs_services_sh_settings_and_comes_back_after_sigkill(tmp_path):
    import redis as redis_py

    server = Redis(read_services_sh(), tmp_path / "redis", port=free_port())
    server.start()
    try:
        client = redis_py.Redis(host="127.0.0.1", port=server.port)
        for line in settings_of(server.conf):
            name, _, value = line.partition(" ")
            if name in ("bind", "port", "logfile", "dir", "daemonize"):
                continue
            assert client.config_get(name)[name] == value, name
        server.kill()
        server.start()
        assert client.ping()
    finally:
        server.stop()


def test_a_delivery_accepted_twice_by_apns_is_one_duplicate_with_one_extra_request():
    def accepted(apns_id, scenario="s-1"):
        return {"provider": "apns", "id": apns_id, "payload": {"aps": {}, "chaos": scenario}}

    records = [accepted("a"), accepted("b"), accepted("a"), accepted("c"), accepted("c"), accepted("c"),
               accepted("a", scenario="other-1")]

    assert provider_duplicates(records, "s-1") == ({"a", "c"}, 3)
