#!/usr/bin/env bash
# A private RabbitMQ broker for tests and benchmarks (Debian's rabbitmq-server, no systemd needed).
#
#   scripts/rabbitmq.sh start DIR   start a broker whose state, logs and PIDs live in DIR; prints its URL
#   scripts/rabbitmq.sh url DIR     print the URL of the broker in DIR (rabbit://guest:guest@127.0.0.1:PORT/)
#   scripts/rabbitmq.sh stop DIR    stop it by PID (TERM the Erlang VM, then its epmd) and keep DIR
#
# Everything listens on 127.0.0.1 only, on ports picked at start (or RABBITMQ_NODE_PORT, RABBITMQ_DIST_PORT,
# ERL_EPMD_PORT from the environment), never on the default 5672/25672/4369, so it neither clashes with nor
# touches a system broker. It runs its own epmd as a child process, so stopping it leaves nothing behind.
# Install the broker with: apt-get install -y rabbitmq-server (about 11 s).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|url|stop DIR" >&2
    exit 2
fi

server=""
for candidate in /usr/lib/rabbitmq/bin/rabbitmq-server /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server; do
    if [ -x "$candidate" ]; then
        server=$candidate
        break
    fi
done

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

stop_pid() {  # TERM, wait up to $2 seconds, then KILL
    local pid=$1 wait_s=$2
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((wait_s * 10))); do
        alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

case "$cmd" in
start)
    if [ -z "$server" ]; then
        echo "rabbitmq-server is not installed: apt-get install -y rabbitmq-server" >&2
        exit 3
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/beam.pid" ] && alive "$(cat "$dir/beam.pid")"; then
        echo "a broker already runs from $dir" >&2
        exit 1
    fi
    node_port=${RABBITMQ_NODE_PORT:-$(free_port)}
    dist_port=${RABBITMQ_DIST_PORT:-$(free_port)}
    epmd_port=${ERL_EPMD_PORT:-$(free_port)}
    echo "[]." > "$dir/enabled_plugins"
    echo "$node_port" > "$dir/port"
    export HOME=$dir  # the Erlang cookie lives here, not in root's home
    export RABBITMQ_NODENAME="zmqrpc-$$@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$node_port
    export RABBITMQ_DIST_PORT=$dist_port
    export ERL_EPMD_PORT=$epmd_port
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE=$dir/mnesia
    export RABBITMQ_LOG_BASE=$dir/log
    export RABBITMQ_LOGS=$dir/log/rabbit.log
    export RABBITMQ_PID_FILE=$dir/beam.pid
    export RABBITMQ_CONFIG_FILE=$dir/rabbitmq  # absent: defaults
    export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    echo "$RABBITMQ_NODENAME" > "$dir/nodename"
    echo "$epmd_port" > "$dir/epmd_port"
    epmd -port "$epmd_port" -address 127.0.0.1 >"$dir/epmd.log" 2>&1 &
    echo $! > "$dir/epmd.pid"
    "$server" >"$dir/server.log" 2>&1 &
    echo $! > "$dir/script.pid"
    # Ready when AMQP accepts connections (RabbitMQ opens its listeners last); usually 4-7 s.
    for _ in $(seq 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$node_port") 2>/dev/null; then
            echo "rabbit://guest:guest@127.0.0.1:$node_port/"
            exit 0
        fi
        if ! alive "$(cat "$dir/script.pid")"; then
            break
        fi
        sleep 0.1
    done
    echo "RabbitMQ did not start; see $dir/server.log and $dir/log/" >&2
    tail -n 20 "$dir/server.log" >&2 || true
    "$0" stop "$dir" || true
    exit 1
    ;;
url)
    echo "rabbit://guest:guest@127.0.0.1:$(cat "$dir/port")/"
    ;;
stop)
    [ -d "$dir" ] || exit 0
    beam=$(cat "$dir/beam.pid" 2>/dev/null || true)
    script=$(cat "$dir/script.pid" 2>/dev/null || true)
    if alive "$beam"; then
        stop_pid "$beam" 15  # the Erlang VM: about 3 s
    elif alive "$script"; then
        # Still booting (no PID file yet): its Erlang VM is the script's child.
        for child in $(pgrep -P "$script" 2>/dev/null || true); do
            stop_pid "$child" 15
        done
    fi
    stop_pid "$script" 5
    stop_pid "$(cat "$dir/epmd.pid" 2>/dev/null || true)" 5
    rm -f "$dir/beam.pid" "$dir/script.pid" "$dir/epmd.pid"
    ;;
*)
    echo "usage: $0 start|url|stop DIR" >&2
    exit 2
    ;;
esac
