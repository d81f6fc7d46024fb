"""Operator checklist: Sentinels run from the file Ansible wrote once, and agree on one master."""

from conftest import GROUP_VARS, HOSTS, MASTER_NAME, address_of, lab_host, redis_cli, replication

SENTINEL_CONF = "/etc/redis/sentinel/sentinel.conf"


def sentinel_master(host) -> dict:
    fields = redis_cli(host, "SENTINEL", "MASTER", MASTER_NAME, port=26379).splitlines()
    return dict(zip(fields[::2], fields[1::2], strict=True))


# That redis-sentinel runs, is enabled and listens is on the shared checklist (test_zmqrpc_services.py).


def test_sentinel_listens_on_all_addresses(host):
    assert host.socket("tcp://0.0.0.0:26379").is_listening


def test_sentinel_runs_from_its_own_file_owned_by_redis(host):
    conf = host.file(SENTINEL_CONF)
    assert conf.user == "redis"
    assert host.file("/etc/redis/sentinel").user == "redis"
    assert SENTINEL_CONF in host.check_output("systemctl show -p ExecStart redis-sentinel")
    # Sentinel has rewritten it (what it learned lives there): Ansible must never template it again.
    assert conf.contains("^sentinel myid ")
    assert conf.contains(f"^sentinel known-replica {MASTER_NAME} ")


def test_sentinel_uses_the_inventory_settings(host):
    master = sentinel_master(host)
    wanted = GROUP_VARS["redis_sentinel"]
    assert master["quorum"] == str(wanted["redis_sentinel_quorum"])
    assert master["down-after-milliseconds"] == str(wanted["redis_sentinel_down_after_milliseconds"])
    assert master["failover-timeout"] == str(wanted["redis_sentinel_failover_timeout"])
    assert "disconnected" not in master["flags"], "Sentinel cannot authenticate to the master (auth-pass)"


def test_sentinels_see_each_other_and_all_replicas(host):
    master = sentinel_master(host)
    assert master["num-other-sentinels"] == str(len(HOSTS) - 1)
    assert master["num-slaves"] == str(len(HOSTS) - 1)


def test_sentinels_agree_on_the_real_master():
    answers = {
        name: redis_cli(
            lab_host(name), "SENTINEL", "get-master-addr-by-name", MASTER_NAME, port=26379
        ).split()
        for name in HOSTS
    }
    assert len({tuple(answer) for answer in answers.values()}) == 1, answers
    ip = answers[HOSTS[0]][0]
    master = next(name for name in HOSTS if address_of(name) == ip)
    assert replication(master)["role"] == "master"
