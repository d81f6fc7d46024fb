"""Unit tests for library/zmqrpc_matchmaker.py: the real zmqrpc CLI against a real redis-server, and the
dummy matchmaker shared through rpc_zmq_ipc_dir."""

from __future__ import annotations

import time

import pytest
import zmqrpc_matchmaker as module
from module_harness import AnsibleFailJson, write_zmqrpc_config, zmqrpc_executable

TOPIC = "legacy-service"
ADDRESS = "10.0.0.20:5000"


@pytest.fixture
def redis_config(zmqrpc_bus):
    return str(zmqrpc_bus.config("ctl1"))


@pytest.fixture
def dummy_config(tmp_path):
    shared = tmp_path / "ipc"
    shared.mkdir()
    return str(
        write_zmqrpc_config(
            tmp_path / "aio.conf", "zmq://", "aio1", rpc_zmq_matchmaker="dummy", rpc_zmq_ipc_dir=shared
        )
    )


def args_for(config_file: str, **extra):
    return {"executable": zmqrpc_executable(), "config_file": config_file, **extra}


def test_register_needs_topic_and_address(run_module, redis_config):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, args_for(redis_config, command="register", topic=TOPIC))
    assert "address" in failure.value.args[0]["msg"]


def test_missing_executable_says_what_to_do(run_module, tmp_path):
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, {"executable": str(tmp_path / "zmqrpc")})
    assert "is role zmqrpc applied" in failure.value.args[0]["msg"]


def test_unreachable_matchmaker_fails_with_the_cli_message(run_module, tmp_path):
    from module_harness import free_port

    conf = write_zmqrpc_config(tmp_path / "z.conf", f"zmq+redis://127.0.0.1:{free_port()}", "ctl1")
    with pytest.raises(AnsibleFailJson) as failure:
        run_module(module, args_for(str(conf)))
    msg = failure.value.args[0]["msg"]
    assert msg.startswith("zmqrpc matchmaker list failed:")
    assert "127.0.0.1" in msg


def test_list_shows_the_agents_with_their_ttl(run_module, zmqrpc_bus):
    agent = zmqrpc_bus.agent("ctl1")
    result = run_module(module, args_for(str(agent.config_file)))
    assert result["changed"] is False
    members = result["topics"]["zmqrpc-agent.ctl1"]
    (address, ttl) = next(iter(members.items()))
    assert address.startswith("127.0.0.1:")
    assert 0 < ttl <= 300
    assert set(result["topics"]["zmqrpc-agent"]) == {address}


def test_list_one_topic_returns_its_hosts(run_module, zmqrpc_bus):
    agent = zmqrpc_bus.agent("ctl1")
    result = run_module(module, args_for(str(agent.config_file), topic="zmqrpc-agent.ctl1"))
    assert list(result["topics"]) == ["zmqrpc-agent.ctl1"]
    assert result["hosts"] == sorted(result["topics"]["zmqrpc-agent.ctl1"])


def test_register_is_idempotent(run_module, redis_config):
    args = args_for(redis_config, command="register", topic=TOPIC, address=ADDRESS, expire=0)
    first = run_module(module, args)
    assert first["changed"] is True
    assert first["hosts"] == [ADDRESS]
    assert first["topics"] == {TOPIC: {ADDRESS: None}}  # never expires
    assert first["commands"] == [f"zmqrpc matchmaker register --topic {TOPIC} --address {ADDRESS} --expire 0"]
    second = run_module(module, args)
    assert second["changed"] is False
    assert second["commands"] == []


def test_check_mode_register_predicts_and_changes_nothing(run_module, redis_config):
    args = args_for(redis_config, command="register", topic=TOPIC, address=ADDRESS, expire=60)
    result = run_module(module, args, check_mode=True)
    assert result["changed"] is True
    assert result["topics"] == {TOPIC: {ADDRESS: 60.0}}
    assert run_module(module, args_for(redis_config, topic=TOPIC))["topics"] == {}


def test_unregister_is_idempotent(run_module, redis_config):
    run_module(module, args_for(redis_config, command="register", topic=TOPIC, address=ADDRESS))
    args = args_for(redis_config, command="unregister", topic=TOPIC, address=ADDRESS)
    assert run_module(module, args, check_mode=True)["changed"] is True
    assert run_module(module, args_for(redis_config, topic=TOPIC))["hosts"] == [ADDRESS]
    first = run_module(module, args)
    assert first["changed"] is True
    assert first["topics"] == {}
    assert first["hosts"] == []
    assert run_module(module, args)["changed"] is False


def test_purge_removes_expired_entries_once(run_module, zmqrpc_bus, redis_config):
    # The entry that never expires first: it keeps the topic's key, whatever time the next register takes
    # on a loaded machine (a key whose only member expires in 1 s can be gone before the next one lands).
    run_module(
        module, args_for(redis_config, command="register", topic=TOPIC, address="10.0.0.21:5000", expire=0)
    )
    run_module(module, args_for(redis_config, command="register", topic=TOPIC, address=ADDRESS, expire=1))
    time.sleep(1.5)
    listed = run_module(module, args_for(redis_config, topic=TOPIC))
    assert listed["hosts"] == ["10.0.0.21:5000"]  # expired entries are not served...
    raw = zmqrpc_bus.redis.client.zrange(f"zmqrpc:topic:{TOPIC}", 0, -1)
    assert ADDRESS in raw  # ...but still stored until purged

    assert run_module(module, args_for(redis_config, command="purge"), check_mode=True)["changed"] is False
    purged = run_module(module, args_for(redis_config, command="purge"))
    assert purged["changed"] is True
    assert purged["purged"] == 1
    assert zmqrpc_bus.redis.client.zrange(f"zmqrpc:topic:{TOPIC}", 0, -1) == ["10.0.0.21:5000"]
    again = run_module(module, args_for(redis_config, command="purge"))
    assert again["changed"] is False
    assert again["purged"] == 0


def test_dummy_matchmaker_is_shared_between_processes(run_module, dummy_config):
    """Each module run starts its own zmqrpc process: they share the registrations through rpc_zmq_ipc_dir."""
    args = args_for(dummy_config, command="register", topic=TOPIC, address=ADDRESS)
    assert run_module(module, args)["changed"] is True
    assert run_module(module, args)["changed"] is False
    assert run_module(module, args_for(dummy_config, topic=TOPIC))["hosts"] == [ADDRESS]
