"""Failover drill: stop the master's Redis; Sentinels elect a new master and agree; the old one rejoins."""

from conftest import HOSTS, address_of, lab_host, replication, sentinel_master_addr, wait_until

TIMEOUT = 90  # down-after 2 s + election + reconfiguration, with a wide margin for a loaded machine


def test_sentinels_fail_over_when_the_master_stops():
    ips = {name: address_of(name) for name in HOSTS}
    old_ip, _ = sentinel_master_addr(HOSTS[0])
    old_master = next(name for name, ip in ips.items() if ip == old_ip)
    survivors = [name for name in HOSTS if name != old_master]

    lab_host(old_master).check_output("systemctl stop redis-server")
    try:

        def new_master_agreed():
            answers = {sentinel_master_addr(name)[0] for name in HOSTS}
            return len(answers) == 1 and old_ip not in answers and answers.pop()

        new_ip = wait_until(new_master_agreed, TIMEOUT, "all Sentinels agree on a new master")
        new_master = next(name for name, ip in ips.items() if ip == new_ip)
        assert new_master in survivors
        assert replication(new_master)["role"] == "master"

        other = next(name for name in survivors if name != new_master)
        wait_until(
            lambda: (
                replication(other).get("master_host") == new_ip
                and replication(other).get("master_link_status") == "up"
            ),
            TIMEOUT,
            f"{other} replicates from the new master {new_master}",
        )
    finally:
        lab_host(old_master).check_output("systemctl start redis-server")

    # The old master comes back as a master (its redis.conf says so); Sentinel demotes it.
    wait_until(
        lambda: (
            replication(old_master).get("master_host") == new_ip
            and replication(old_master).get("master_link_status") == "up"
        ),
        TIMEOUT,
        f"{old_master} rejoins as a replica of {new_master}",
    )
