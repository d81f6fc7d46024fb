"""Operator checklist: Redis servers, replication, and reaching Redis across hosts."""

from conftest import HOSTS, PASSWORD, address_of, lab_host, redis_cli, replication

# That redis-server runs, is enabled and listens is on the shared checklist (test_zmqrpc_services.py).


def test_redis_listens_on_all_addresses(host):
    assert host.socket("tcp://0.0.0.0:6379").is_listening


def test_redis_asks_for_the_password(host):
    without = host.run("redis-cli -h 127.0.0.1 ping")
    assert "NOAUTH" in without.stdout + without.stderr
    assert redis_cli(host, "ping") == "PONG"


def test_redis_conf_is_written_by_ansible_only(host):
    conf = host.file("/etc/redis/redis.conf")
    assert conf.contains(f'^requirepass "{PASSWORD}"$')
    assert conf.mode == 0o640
    # Sentinel's CONFIG REWRITE on failover must not change the file Ansible owns.
    assert "ERR" in redis_cli(host, "CONFIG", "REWRITE")


def test_one_master_and_two_replicas_in_sync():
    roles = {name: replication(name) for name in HOSTS}
    masters = [name for name, info in roles.items() if info["role"] == "master"]
    assert len(masters) == 1, f"expected one master, got {masters}"
    master = masters[0]
    assert roles[master]["connected_slaves"] == str(len(HOSTS) - 1)
    master_ip = address_of(master)
    for name, info in roles.items():
        if name != master:
            assert info["role"] == "slave", f"{name} is {info['role']}"
            assert info["master_host"] == master_ip
            link = info["master_link_status"]
            assert link == "up", f"{name} replication link is {link}"


def test_a_write_on_the_master_reaches_every_replica():
    master = next(name for name in HOSTS if replication(name)["role"] == "master")
    redis_cli(lab_host(master), "SET", "zmqrpc:checklist", "replicated")
    redis_cli(lab_host(master), "WAIT", str(len(HOSTS) - 1), "5000")
    for name in HOSTS:
        assert redis_cli(lab_host(name), "GET", "zmqrpc:checklist") == "replicated"


def test_redis_is_reachable_from_another_host():
    for index, name in enumerate(HOSTS):
        other = lab_host(HOSTS[(index + 1) % len(HOSTS)])
        assert redis_cli(other, "ping", target=name) == "PONG", f"{name}:6379 from another host"
