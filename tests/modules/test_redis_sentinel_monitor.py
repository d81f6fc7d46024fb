"""Unit tests for library/redis_sentinel_monitor.py against real redis-server and redis-sentinel."""

from __future__ import annotations

import pytest
import redis_sentinel_monitor as module
from module_harness import AnsibleFailJson, free_port, wait_until

PASSWORD = "s3cret-master"


@pytest.fixture
def master(redis_factory):
    return redis_factory("server", f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\n", password=PASSWORD)


@pytest.fixture
def sentinel(redis_factory):
    return redis_factory("sentinel")


def sentinel_master(sentinel, name="zmqrpc"):
    reply = sentinel.client.execute_command("SENTINEL", "MASTER", name)
    return module.parse_pairs(reply)


def monitored_names(sentinel):
    return [
        module.parse_pairs(entry)["name"] for entry in sentinel.client.execute_command("SENTINEL", "MASTERS")
    ]


def args_for(master, sentinel, **extra):
    args = {
        "name": "zmqrpc",
        "ip": "127.0.0.1",
        "port": master.port,
        "quorum": 1,
        "down_after_milliseconds": 5000,
        "failover_timeout": 60000,
        "parallel_syncs": 1,
        "auth_pass": PASSWORD,
        "config_file": str(sentinel.config_file),
        "sentinel_port": sentinel.port,
    }
    args.update(extra)
    return args


# --- argument validation: no Redis needed -------------------------------------------


def test_present_without_ip_fails_before_connecting(run_module):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"name": "zmqrpc", "sentinel_port": 1})
    assert "ip" in failure.value.args[0]["msg"]


def test_out_of_range_port_is_refused(run_module):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"name": "zmqrpc", "ip": "127.0.0.1", "port": 70000}, check_mode=True)
    assert "port must be between 1 and 65535" in failure.value.args[0]["msg"]


def test_zero_quorum_is_refused(run_module):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"name": "zmqrpc", "ip": "127.0.0.1", "quorum": 0}, check_mode=True)
    assert "quorum must be a positive integer" in failure.value.args[0]["msg"]


def test_bad_master_name_is_refused(run_module):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"name": "two words", "ip": "127.0.0.1"}, check_mode=True)
    assert "may only hold letters" in failure.value.args[0]["msg"]


def test_unreachable_sentinel_gives_an_actionable_message(run_module):

    port = free_port()  # nothing listens there
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"name": "zmqrpc", "ip": "127.0.0.1", "sentinel_port": port, "connect_timeout": 1})
    assert f"cannot reach Sentinel 127.0.0.1:{port}" in failure.value.args[0]["msg"]


def test_read_auth_pass_reads_only_the_named_master(tmp_path):
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        'sentinel auth-pass other nope\nsentinel auth-pass zmqrpc "pa ss"\n# sentinel auth-pass zmqrpc x\n'
    )
    assert module.read_auth_pass(str(conf), "zmqrpc") == "pa ss"
    assert module.read_auth_pass(str(conf), "missing") is None


# --- against a real Sentinel --------------------------------------------------------


def test_check_mode_reports_the_change_and_sends_nothing(run_module, master, sentinel):
    result = run_module(module, args_for(master, sentinel), check_mode=True)
    assert result["changed"] is True
    assert result["commands"][0] == f"SENTINEL MONITOR zmqrpc 127.0.0.1 {master.port} 1"
    assert f"SENTINEL SET zmqrpc auth-pass {module.MASKED}" in result["commands"]
    assert PASSWORD not in " ".join(result["commands"])
    assert monitored_names(sentinel) == []


def test_monitor_then_nothing_to_do(run_module, master, sentinel):
    first = run_module(module, args_for(master, sentinel))
    assert first["changed"] is True
    state = sentinel_master(sentinel)
    assert (state["ip"], state["port"], state["quorum"]) == ("127.0.0.1", master.port, 1)
    assert state["down-after-milliseconds"] == 5000
    assert state["failover-timeout"] == 60000
    assert first["master"]["port"] == master.port
    # Sentinel persisted the password in its own file, and uses it: the master link is up.
    assert module.read_auth_pass(str(sentinel.config_file), "zmqrpc") == PASSWORD
    wait_until(
        lambda: (
            "disconnected" not in sentinel_master(sentinel)["flags"]
            and sentinel_master(sentinel)["role-reported"] == "master"
        ),
        10,
        "Sentinel to reach the master",
    )

    second = run_module(module, args_for(master, sentinel))
    assert second["changed"] is False
    assert second["commands"] == []
    third = run_module(module, args_for(master, sentinel), check_mode=True)
    assert third["changed"] is False


def test_only_the_differing_setting_is_sent(run_module, master, sentinel):
    run_module(module, args_for(master, sentinel))
    result = run_module(module, args_for(master, sentinel, quorum=2, down_after_milliseconds=5000))
    assert result["changed"] is True
    assert result["commands"] == ["SENTINEL SET zmqrpc quorum 2"]
    assert sentinel_master(sentinel)["quorum"] == 2
    assert result["master"]["quorum"] == 2


def test_changed_auth_pass_is_detected_from_the_config_file(run_module, master, sentinel):
    run_module(module, args_for(master, sentinel))
    result = run_module(module, args_for(master, sentinel, auth_pass="rotated"))
    assert result["commands"] == [f"SENTINEL SET zmqrpc auth-pass {module.MASKED}"]
    assert module.read_auth_pass(str(sentinel.config_file), "zmqrpc") == "rotated"
    assert run_module(module, args_for(master, sentinel, auth_pass="rotated"))["changed"] is False


def test_operator_moved_master_is_re_pointed(run_module, redis_factory, master, sentinel):
    run_module(module, args_for(master, sentinel))
    other = redis_factory("server", f"requirepass {PASSWORD}\n", password=PASSWORD)
    result = run_module(module, args_for(master, sentinel, port=other.port))
    assert result["changed"] is True
    assert result["failed_over"] is False
    assert result["commands"][:2] == [
        "SENTINEL REMOVE zmqrpc",
        f"SENTINEL MONITOR zmqrpc 127.0.0.1 {other.port} 1",
    ]
    assert sentinel_master(sentinel)["port"] == other.port


def test_absent_removes_once(run_module, master, sentinel):
    run_module(module, args_for(master, sentinel))
    removed = run_module(module, {"name": "zmqrpc", "state": "absent", "sentinel_port": sentinel.port})
    assert removed["changed"] is True
    assert removed["commands"] == ["SENTINEL REMOVE zmqrpc"]
    assert monitored_names(sentinel) == []
    again = run_module(module, {"name": "zmqrpc", "state": "absent", "sentinel_port": sentinel.port})
    assert again["changed"] is False


def test_sentinel_password_is_required_and_used(run_module, redis_factory, master):
    guarded = redis_factory("sentinel", "requirepass sentinel-pw\n", password="sentinel-pw")
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, args_for(master, guarded))
    assert "requires a password: set sentinel_password" in failure.value.args[0]["msg"]
    result = run_module(module, args_for(master, guarded, sentinel_password="sentinel-pw"))
    assert result["changed"] is True
    assert sentinel_master(guarded)["port"] == master.port


def test_a_real_failover_is_not_undone(run_module, redis_factory, master, sentinel):
    replica = redis_factory(
        "server",
        f"requirepass {PASSWORD}\nmasterauth {PASSWORD}\nreplicaof 127.0.0.1 {master.port}\n",
        password=PASSWORD,
    )
    wait_until(
        lambda: replica.client.info("replication")["master_link_status"] == "up", 15, "the replica to sync"
    )
    args = args_for(master, sentinel, down_after_milliseconds=1000, failover_timeout=10000)
    assert run_module(module, args)["changed"] is True
    wait_until(lambda: sentinel_master(sentinel)["num-slaves"] == 1, 20, "Sentinel to discover the replica")

    master.stop()
    wait_until(lambda: sentinel_master(sentinel)["port"] == replica.port, 60, "Sentinel to fail over")
    assert sentinel_master(sentinel)["config-epoch"] > 0

    result = run_module(module, args)
    assert result["failed_over"] is True
    assert result["changed"] is False
    assert result["commands"] == []
    assert sentinel_master(sentinel)["port"] == replica.port

    forced = run_module(module, dict(args, force_address=True), check_mode=True)
    assert forced["changed"] is True
    assert forced["commands"][:2] == [
        "SENTINEL REMOVE zmqrpc",
        f"SENTINEL MONITOR zmqrpc 127.0.0.1 {master.port} 1",
    ]
    assert sentinel_master(sentinel)["port"] == replica.port  # check mode changed nothing
