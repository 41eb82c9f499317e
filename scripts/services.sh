#!/usr/bin/env bash
# Run the real backing services for development and tests, on loopback only:
#   Redis       127.0.0.1:16379  (Debian package redis-server; append-only file, fsync every second)
#   PostgreSQL  127.0.0.1:15432  (Debian package postgresql; databases notifier, notifier_test;
#                                 synchronous_commit on, fsync on)
#   Kafka       127.0.0.1:19092  (single-node KRaft, controller on 19093; jars from Maven Central)
#   RabbitMQ    127.0.0.1:17672  (Debian package rabbitmq-server; Erlang distribution on 17673,
#                                 its epmd on 14369; vhost notifier, user notifier)
#   redis-cluster (only when named): a Redis Cluster of 3 masters + 3 replicas on 127.0.0.1:17000-17005
#                 (cluster bus 18000-18005, cluster-node-timeout 2000 ms; Debian's redis-server), for the
#                 data Redis only; `env` then exports NOTIFIER_REDIS_CLUSTER_URL (docs/scaling.md)
#
# Usage: scripts/services.sh start|stop|status [--pg-shards] [service...]   (services: redis postgres kafka
#                                                                rabbitmq redis-cluster; default: the first four)
#        scripts/services.sh env | rabbitmqctl <args...>
#   start        install what is missing, start what is not running, wait until each answers
#   stop         stop them; harmless when they are not running
#   status       print each one's state; exit 0 only when all answer
#   env          print the export lines that point notifier at these services
#   rabbitmqctl  run rabbitmqctl against our RabbitMQ node (e.g. `rabbitmqctl list_queues`)
#   --pg-shards  also two PostgreSQL shards, each behind its own PgBouncer in transaction pooling
#                (Debian package pgbouncer): databases notifier_shard0 and notifier_shard1 on the
#                PostgreSQL above (two databases on one server prove the routing; two servers on one
#                machine would prove nothing more), PgBouncers on 127.0.0.1:16432 and :16433; `env`
#                then prints NOTIFIER_DATABASE_URLS_SHARDED (opt-in: NOTIFIER_DATABASE_URL stays the
#                default; export NOTIFIER_DATABASE_URLS=$NOTIFIER_DATABASE_URLS_SHARDED to use them,
#                then `notifier migrate` migrates both). `stop --pg-shards` stops only the PgBouncers.
#                docs/sharding.md.
#
# Durability (docs/operations.md, "Development services"): what these servers acknowledge
# survives a crash of the server process. Redis fsyncs its append-only file once a second, so a
# crash of the whole machine may lose the last second of broker and cache writes (the delivery
# log in PostgreSQL, fsynced at every commit, is what the sweeper re-drives from). Kafka, with
# one replica, relies on the page cache like any single broker: a machine crash may lose the
# last messages it acknowledged.
#
# State, data and logs live under <repo>/.services/ (gitignored). Kafka's jars are cached
# outside the repo in ${NOTIFIER_CACHE:-$HOME/.cache/notifier}/kafka-<version>/libs.
#
# Environment knobs:
#   NOTIFIER_CACHE                  jar cache root (default: $HOME/.cache/notifier)
#   NOTIFIER_SERVICES_TIMEOUT       seconds to wait for each service to answer (default: 120)
#   NOTIFIER_SERVICES_DIR           state, data and logs (default: <repo>/.services)
#   NOTIFIER_SERVICES_PORT_OFFSET   added to every port above (default: 0), e.g. -3000 runs a second
#                                   set beside the first, from another NOTIFIER_SERVICES_DIR (keep the
#                                   ports out of 20000-32767, where tests pick sandbox ports, and out
#                                   of the kernel's ephemeral range, 32768-60999)
#   PYTHON                          interpreter used for the Kafka readiness check
#                                   (default: <repo>/.venv/bin/python; TCP check if absent)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${NOTIFIER_SERVICES_DIR:-$ROOT/.services}"
CACHE_DIR="${NOTIFIER_CACHE:-$HOME/.cache/notifier}"
TIMEOUT="${NOTIFIER_SERVICES_TIMEOUT:-120}"
# A server that exits while starting is started again, this many times in all, after pauses of
# 5, 10, 15 ... seconds (a minute of retrying in all at the default).
START_ATTEMPTS=5
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

HOST=127.0.0.1
PORT_OFFSET="${NOTIFIER_SERVICES_PORT_OFFSET:-0}"
REDIS_PORT=$((16379 + PORT_OFFSET))
PG_PORT=$((15432 + PORT_OFFSET))
KAFKA_PORT=$((19092 + PORT_OFFSET))
KAFKA_CONTROLLER_PORT=$((19093 + PORT_OFFSET))
# Below 20000 (notifier.devstack picks sandbox ports in 20000-32767) and away from RabbitMQ's
# defaults (5672, 25672, epmd 4369), so a system RabbitMQ or Erlang node never clashes with ours.
RABBITMQ_PORT=$((17672 + PORT_OFFSET))
RABBITMQ_DIST_PORT=$((17673 + PORT_OFFSET))
RABBITMQ_EPMD_PORT=$((14369 + PORT_OFFSET))
RABBITMQ_NODE="notifier-$RABBITMQ_PORT@localhost"
# One PgBouncer per shard, as in production (each shard's own pooler).
PG_SHARDS=2
PGBOUNCER_PORT=$((16432 + PORT_OFFSET))
# Redis Cluster nodes: client ports from here, cluster bus ports 1000 above (set explicitly: the
# default +10000 would land in 27000-27005, inside the sandbox's port range).
REDIS_CLUSTER_PORT=$((17000 + PORT_OFFSET))
REDIS_CLUSTER_NODES=6

# Kafka 4.x brokers run on Java 17. Kafka logs through log4j2 and still calls the
# slf4j 1.7 API, so the binding is log4j-slf4j-impl at the log4j version Kafka pins.
KAFKA_VERSION=4.4.0
KAFKA_LOG4J_VERSION=2.25.5
KAFKA_HEAP_OPTS=(-Xms128m -Xmx512m)

REDIS_DIR="$SERVICES_DIR/redis"
PG_DIR="$SERVICES_DIR/postgres"
KAFKA_DIR="$SERVICES_DIR/kafka"
RABBITMQ_DIR="$SERVICES_DIR/rabbitmq"
REDIS_CLUSTER_DIR="$SERVICES_DIR/redis-cluster"
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"

# ---------------------------------------------------------------------------- helpers

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() {
    # True when something accepts TCP connections on 127.0.0.1:$1.
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

pid_alive() {
    # True when pidfile $1 names a live process whose command line contains $2.
    local pidfile=$1 pattern=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    local cmdline
    # Read, then match: under pipefail a `tr | grep -q` pipe can fail on SIGPIPE.
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmdline == *"$pattern"* ]]
}

show_log() {
    # show_log <logfile>: its last lines, then its error lines, last of all (a CI report
    # keeps only the tail of the output, and the errors are what explain a failure).
    local logfile=$1
    [[ -f $logfile ]] || return 0
    printf '[services] last lines of %s:\n' "$logfile" >&2
    tail -n 30 "$logfile" | cut -c1-400 >&2
    if grep -qE '(ERROR|FATAL|PANIC)' "$logfile"; then
        printf '[services] errors in %s:\n' "$logfile" >&2
        grep -E '(ERROR|FATAL|PANIC)' "$logfile" | tail -n 10 | cut -c1-400 >&2
    fi
}

fail_with_log() {
    # fail_with_log <what> <logfile> [reason]: show the log, say why a service is not up, exit.
    local what=$1 logfile=$2 reason=${3:-"not ready within ${TIMEOUT}s"}
    show_log "$logfile"
    printf '[services] ERROR: %s: %s\n' "$what" "$reason" >&2
    exit 1
}

wait_until() {
    # wait_until <what> <logfile> <command...>: poll the command until it succeeds.
    local what=$1 logfile=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail_with_log "$what" "$logfile"
        sleep 0.5
    done
}

spawn() {
    # spawn <pidfile> <outfile> <command...>: run a server in the background, in its own
    # session so it outlives this shell and its process group. The pidfile holds the
    # server's own pid, since bash execs into the command.
    local pidfile=$1 outfile=$2; shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016  # $$, $1 and $@ belong to the inner bash
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' spawn "$pidfile" "$@" \
        </dev/null >"$outfile" 2>&1 &
}

start_server() {
    # start_server <what> <pidfile> <pattern> <outfile> <logfile> <probe> <command...>: spawn
    # the server and poll the probe until it answers. A server that exits while starting is
    # started again after a growing pause (START_ATTEMPTS in all; each failed attempt's log is kept
    # as <logfile>.failed-<n>); one that neither answers nor exits within TIMEOUT fails.
    local what=$1 pidfile=$2 pattern=$3 outfile=$4 logfile=$5 probe=$6; shift 6
    local attempt rc
    for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
        spawn "$pidfile" "$outfile" "$@"
        rc=0
        try_ready "$what" "$pidfile" "$pattern" "$outfile" "$probe" || rc=$?
        ((rc == 0)) && return
        ((rc == 2)) || fail_with_log "$what" "$logfile"
        ((attempt < START_ATTEMPTS)) || break
        show_log "$logfile"
        [[ -f $logfile ]] && cp "$logfile" "$logfile.failed-$attempt"
        log "$what exited while starting (attempt $attempt of $START_ATTEMPTS); starting it again"
        sleep $((attempt * 5))
    done
    fail_with_log "$what" "$logfile" "exited while starting, $START_ATTEMPTS times (its output: $outfile)"
}

try_ready() {
    # try_ready <what> <pidfile> <pattern> <outfile> <probe...>: poll the probe until it
    # succeeds (0); 2 when the spawned process exits first, showing its output; 1 on timeout.
    local what=$1 pidfile=$2 pattern=$3 outfile=$4; shift 4
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [[ -s $pidfile ]] && ! pid_alive "$pidfile" "$pattern"; then
            if [[ -s $outfile ]]; then
                printf '[services] %s exited; its output:\n' "$what" >&2
                tail -n 20 "$outfile" | cut -c1-400 >&2
            fi
            return 2
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

apt_updated=0
apt_install() {
    log "installing Debian packages: $*"
    local aptlog="$SERVICES_DIR/apt.log"
    mkdir -p "$SERVICES_DIR"
    {
        if ((apt_updated == 0)); then
            DEBIAN_FRONTEND=noninteractive apt-get update && apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    } >>"$aptlog" 2>&1 || { tail -n 30 "$aptlog" >&2; die "apt-get install $* failed (log: $aptlog)"; }
}

# ---------------------------------------------------------------------- redis cluster

redis_cluster_ports() {
    local i
    for ((i = 0; i < REDIS_CLUSTER_NODES; i++)); do echo $((REDIS_CLUSTER_PORT + i)); done
}

redis_cluster_ok() {
    # The cluster answers and every slot is served.
    timeout 3 redis-cli -h "$HOST" -p "$REDIS_CLUSTER_PORT" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

redis_cluster_node_up() {
    timeout 3 redis-cli -h "$HOST" -p "$PROBE_PORT" ping 2>/dev/null | grep -q PONG
}

redis_cluster_start() {
    redis_ensure_installed
    # Every node not answering is started (a node killed in a failover test rejoins as a replica).
    local port dir addresses=()
    for port in $(redis_cluster_ports); do
        dir="$REDIS_CLUSTER_DIR/$port"
        mkdir -p "$dir"
        # cluster-node-timeout 2000: a dead master's replica takes over within a few seconds (the
        # failover test kills one). appendonly as on the single Redis: a restarted node keeps its data.
        cat >"$dir/redis.conf" <<EOF
# Generated by scripts/services.sh; rewritten on every start.
bind $HOST
port $port
cluster-enabled yes
cluster-port $((port + 1000))
cluster-config-file $dir/nodes.conf
cluster-node-timeout 2000
protected-mode yes
daemonize no
logfile $dir/redis.log
dir $dir
appendonly yes
appendfsync everysec
stop-writes-on-bgsave-error no
EOF
        if ! timeout 3 redis-cli -h "$HOST" -p "$port" ping 2>/dev/null | grep -q PONG; then
            log "starting redis cluster node on $HOST:$port"
            PROBE_PORT=$port start_server "redis-cluster-$port" "$dir/redis.pid" redis-server "$dir/redis.out" \
                "$dir/redis.log" redis_cluster_node_up redis-server "$dir/redis.conf"
        fi
        addresses+=("$HOST:$port")
    done
    if ! redis_cluster_ok; then
        # Nodes that know each other already (a restart) meet again by themselves; new ones are joined here.
        # (CLUSTER INFO's lines end in \r\n.)
        if timeout 3 redis-cli -h "$HOST" -p "$REDIS_CLUSTER_PORT" cluster info 2>/dev/null | tr -d '\r' \
                | grep -q '^cluster_known_nodes:1$'; then
            log "creating the cluster: 3 masters, 1 replica each"
            redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes \
                >"$REDIS_CLUSTER_DIR/create.log" 2>&1 \
                || { tail -n 20 "$REDIS_CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
        fi
        wait_until redis-cluster "$REDIS_CLUSTER_DIR/create.log" redis_cluster_ok
    fi
}

redis_cluster_stop() {
    local port dir pid
    for port in $(redis_cluster_ports); do
        dir="$REDIS_CLUSTER_DIR/$port"
        pid_alive "$dir/redis.pid" redis-server || continue
        pid=$(<"$dir/redis.pid")
        log "stopping redis cluster node $port (pid $pid)"
        redis-cli -h "$HOST" -p "$port" shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        rm -f "$dir/redis.pid"
    done
}

redis_cluster_status() {
    if redis_cluster_ok; then
        log "redis-cluster: running on $HOST:$REDIS_CLUSTER_PORT-$((REDIS_CLUSTER_PORT + REDIS_CLUSTER_NODES - 1))"
    else
        log "redis-cluster: stopped (or not every slot served)"
        return 1
    fi
}

redis_cluster_url() {
    local port nodes=()
    for port in $(redis_cluster_ports); do nodes+=("$HOST:$port"); done
    local IFS=,
    echo "redis+cluster://${nodes[*]}/"
}

# ------------------------------------------------------------------------------ redis

redis_ensure_installed() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
    apt_install redis-server
    # The Debian package may start its own instance on :6379; ours is separate and the
    # package's is left as the package set it up.
}

redis_running() {
    timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}

redis_cli() {
    redis-cli -h "$HOST" -p "$REDIS_PORT" "$@"
}

redis_aof_on() {
    [[ $(timeout 5 redis-cli -h "$HOST" -p "$REDIS_PORT" config get appendonly 2>/dev/null | tail -n 1) == yes ]]
}

redis_enable_aof_live() {
    # Turn the append-only file on in a running server: Redis rewrites it from memory, so no data
    # is lost (restarting with `appendonly yes` beside an RDB file alone would start empty).
    log "redis: turning on the append-only file (appendfsync everysec)"
    redis_cli config set appendfsync everysec >/dev/null
    redis_cli config set appendonly yes >/dev/null
    local deadline=$((SECONDS + TIMEOUT))
    until redis_cli info persistence 2>/dev/null | grep -q '^aof_rewrite_in_progress:0'; do
        ((SECONDS < deadline)) || fail_with_log redis "$REDIS_DIR/redis.log" "AOF rewrite did not finish"
        sleep 0.5
    done
}

redis_write_config() {
    # appendonly: the Celery queues, leases and counters survive a restart or crash of Redis.
    # A data directory that holds only an RDB snapshot (from before the AOF) starts without it
    # and turns it on once loaded (redis_enable_aof_live), since Redis with `appendonly yes` and
    # no AOF yet would ignore the snapshot and start empty.
    local appendonly=yes
    if [[ -f $REDIS_DIR/data/dump.rdb && ! -d $REDIS_DIR/data/appendonlydir ]]; then
        appendonly=no
    fi
    cat >"$REDIS_DIR/redis.conf" <<EOF
# Generated by scripts/services.sh; rewritten on every start.
bind $HOST
port $REDIS_PORT
protected-mode yes
daemonize no
logfile $REDIS_DIR/redis.log
dir $REDIS_DIR/data
# Every write is appended to the AOF before Redis replies, and fsynced once a second: a crash or
# kill of Redis loses nothing it acknowledged; a crash of the machine may lose the last second.
# "always" would fsync every write (every broker message, lease and counter) at a large cost in
# throughput; what that second could lose is covered by the delivery log in PostgreSQL.
appendonly $appendonly
appendfsync everysec
# RDB snapshots stay on beside the AOF (the AOF is what durability rests on): a failed snapshot
# (full disk, no memory to fork) must not stop writes the AOF still records.
stop-writes-on-bgsave-error no
EOF
    [[ $appendonly == yes ]]
}

redis_start() {
    redis_ensure_installed
    if redis_running; then
        if pid_alive "$REDIS_DIR/redis.pid" redis-server; then
            log "redis already running (pid $(<"$REDIS_DIR/redis.pid"))"
            # Started by an older version of this script, without the AOF: turn it on in place.
            redis_aof_on || { redis_enable_aof_live; redis_write_config || true; }
        else
            log "redis already answering on $HOST:$REDIS_PORT (not started from this checkout)"
            redis_aof_on || log "WARNING: that redis runs without an append-only file: a restart loses its queues"
        fi
        return
    fi
    mkdir -p "$REDIS_DIR/data"
    local aof_ready=1
    redis_write_config || aof_ready=0
    log "starting redis on $HOST:$REDIS_PORT"
    start_server redis "$REDIS_DIR/redis.pid" redis-server "$REDIS_DIR/redis.out" "$REDIS_DIR/redis.log" \
        redis_running redis-server "$REDIS_DIR/redis.conf"
    if ((aof_ready == 0)); then
        redis_enable_aof_live
        redis_write_config
    fi
}

redis_stop() {
    if ! pid_alive "$REDIS_DIR/redis.pid" redis-server; then
        if redis_running; then
            log "redis answers on $HOST:$REDIS_PORT but was not started from this checkout; left alone"
        else
            log "redis not running"
        fi
        return 0
    fi
    local pid; pid=$(<"$REDIS_DIR/redis.pid")
    log "stopping redis (pid $pid)"
    redis-cli -h "$HOST" -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "redis did not exit within 30s; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$REDIS_DIR/redis.pid"
}

redis_status() {
    if redis_running; then
        local owner="not started from this checkout"
        pid_alive "$REDIS_DIR/redis.pid" redis-server && owner="pid $(<"$REDIS_DIR/redis.pid")"
        local aof="append-only file on"
        redis_aof_on || aof="NO append-only file"
        log "redis:    running on $HOST:$REDIS_PORT ($owner; $aof)"
    else
        log "redis:    stopped"
        return 1
    fi
}

# ------------------------------------------------------------------------- postgresql

PG_BIN=""
PG_DATA=""

pg_find_bin() {
    # The newest installed server version under /usr/lib/postgresql/<ver>/bin.
    local initdb
    initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    [[ -x $initdb ]] && PG_BIN=$(dirname "$initdb")
}

pg_ensure_installed() {
    pg_find_bin && return
    apt_install postgresql
    pg_find_bin || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
}

as_postgres() {
    # Run a command as the postgres system user from a directory it can read.
    (cd / && runuser -u postgres -- "$@")
}

pg_resolve_data_dir() {
    # The cluster lives in .services/postgres/data, unless the postgres user cannot reach
    # the checkout (say it sits under /root): then it lives under postgres's home and
    # .services/postgres links to it.
    if [[ -L $PG_DIR ]]; then
        PG_DATA="$(readlink -f "$PG_DIR")/data"
        return
    fi
    mkdir -p "$PG_DIR"
    chown postgres:postgres "$PG_DIR"
    chmod 700 "$PG_DIR"
    if as_postgres test -w "$PG_DIR"; then
        PG_DATA="$PG_DIR/data"
        return
    fi
    local home real
    home=$(getent passwd postgres | cut -d: -f6)
    # Keyed by the checkout (or by NOTIFIER_SERVICES_DIR when set), so each set has its own cluster.
    local key=$ROOT
    [[ $SERVICES_DIR == "$ROOT/.services" ]] || key=$SERVICES_DIR
    real="$home/notifier-$(printf '%s' "$key" | md5sum | cut -c1-12)"
    log "postgres user cannot reach $PG_DIR; keeping the cluster in $real"
    mkdir -p "$real"
    chown postgres:postgres "$real"
    chmod 700 "$real"
    rmdir "$PG_DIR"
    ln -s "$real" "$PG_DIR"
    PG_DATA="$real/data"
}

pg_log() { printf '%s\n' "$(dirname "$PG_DATA")/postgres.log"; }

pg_ready() {
    "$PG_BIN/pg_isready" -q -t 3 -h "$HOST" -p "$PG_PORT"
}

pg_psql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_init_cluster() {
    [[ -f $PG_DATA/PG_VERSION ]] && return
    log "initialising postgres cluster in $PG_DATA"
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale >"$(pg_log).initdb" 2>&1 \
        || fail_with_log postgres "$(pg_log).initdb" "initdb failed"
}

pg_write_config() {
    # Our settings, appended to postgresql.conf as one block that each start rewrites (a cluster
    # made by an older version of this script had synchronous_commit off; this turns it back on).
    # Loopback TCP only, no unix socket (a deep checkout path would overflow the socket path
    # limit, and /var/run/postgresql belongs to the system cluster). Durability is PostgreSQL's
    # default and is said out loud: a commit returns once its WAL is fsynced, so a committed
    # delivery row survives a crash of PostgreSQL or of the machine.
    local conf="$PG_DATA/postgresql.conf" block
    block=$(cat <<EOF
# --- scripts/services.sh
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = ''
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
)
    as_postgres sed -i '/^# --- scripts\/services.sh$/,$d' "$conf"
    printf '%s\n' "$block" | as_postgres tee -a "$conf" >/dev/null
}

pg_synchronous_commit() {
    pg_psql -tAc "SHOW synchronous_commit" 2>/dev/null || true
}

pg_create_databases() {
    local exists
    exists=$(pg_psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'notifier'")
    [[ $exists == 1 ]] || pg_psql -c "CREATE ROLE notifier LOGIN CREATEDB PASSWORD 'notifier'"
    local db
    for db in notifier notifier_test; do
        exists=$(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")
        if [[ $exists == 1 ]]; then
            pg_psql -c "ALTER DATABASE $db OWNER TO notifier"
        else
            log "creating database $db"
            pg_psql -c "CREATE DATABASE $db OWNER notifier"
        fi
    done
}

pg_start() {
    pg_ensure_installed
    pg_resolve_data_dir
    if pg_ready; then
        if as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
            log "postgres already running ($PG_DATA)"
            if [[ $(pg_synchronous_commit) != on ]]; then
                # Started with an older version of this script: these settings need only a reload.
                log "postgres: turning synchronous_commit on (reload)"
                pg_write_config
                as_postgres "$PG_BIN/pg_ctl" reload -D "$PG_DATA" >/dev/null
            fi
        else
            log "postgres already answering on $HOST:$PG_PORT (not started from this checkout)"
            [[ $(pg_synchronous_commit) == on ]] \
                || log "WARNING: that postgres runs with synchronous_commit $(pg_synchronous_commit): a crash loses commits"
        fi
    else
        pg_init_cluster
        pg_write_config
        log "starting postgres $(basename "$(dirname "$PG_BIN")") on $HOST:$PG_PORT"
        local attempt
        for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
            as_postgres "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$(pg_log)" -w -t "$TIMEOUT" >/dev/null && break
            ((attempt < START_ATTEMPTS)) || fail_with_log postgres "$(pg_log)" "pg_ctl start failed, $START_ATTEMPTS times"
            show_log "$(pg_log)"
            log "postgres did not start (attempt $attempt of $START_ATTEMPTS); starting it again"
            sleep 3
        done
        wait_until postgres "$(pg_log)" pg_ready
    fi
    pg_create_databases
}

pg_stop() {
    pg_find_bin || { log "postgres not installed"; return 0; }
    [[ -e $PG_DIR ]] && pg_resolve_data_dir
    if [[ -n $PG_DATA && -f $PG_DATA/PG_VERSION ]] && as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; then
        log "stopping postgres"
        as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
    elif pg_ready; then
        log "postgres answers on $HOST:$PG_PORT but was not started from this checkout; left alone"
    else
        log "postgres not running"
    fi
}

pg_status() {
    if pg_find_bin && pg_ready; then
        log "postgres: running on $HOST:$PG_PORT (databases notifier, notifier_test; role notifier; synchronous_commit $(pg_synchronous_commit))"
    else
        log "postgres: stopped"
        return 1
    fi
}

# ------------------------------------------------------------- postgres shards + pgbouncer

pgb_dir() { printf '%s/pgbouncer-%s\n' "$(dirname "$PG_DATA")" "$1"; }
pgb_port() { echo $((PGBOUNCER_PORT + $1)); }
pgb_running() { local pid; pid=$(cat "$(pgb_dir "$1")/pgbouncer.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }

pgshards_start() {
    pg_ensure_installed
    pg_resolve_data_dir
    pg_ready || die "--pg-shards: postgres does not answer on $HOST:$PG_PORT (start postgres too)"
    [[ -x /usr/sbin/pgbouncer ]] || apt_install pgbouncer
    # The Debian package's own system service (port 6432) is not used: ours are separate processes.
    local i db dir exists
    for ((i = 0; i < PG_SHARDS; i++)); do
        db=notifier_shard$i
        exists=$(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")
        [[ $exists == 1 ]] || { log "creating database $db"; pg_psql -c "CREATE DATABASE $db OWNER notifier"; }
        dir=$(pgb_dir "$i")
        if pgb_running "$i"; then
            log "pgbouncer for shard $i already running on $HOST:$(pgb_port "$i")"
            continue
        fi
        mkdir -p "$dir"
        printf '"notifier" "notifier"\n' >"$dir/userlist.txt"
        cat >"$dir/pgbouncer.ini" <<INI
[databases]
$db = host=$HOST port=$PG_PORT dbname=$db

[pgbouncer]
listen_addr = $HOST
listen_port = $(pgb_port "$i")
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
; Transaction pooling: a server connection is lent for one transaction, so hundreds of worker
; processes share a few. notifier keeps no session state (docs/sharding.md).
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = notifier
INI
        chown -R postgres:postgres "$dir"
        log "starting pgbouncer for shard $i ($db) on $HOST:$(pgb_port "$i"), transaction pooling"
        # PgBouncer refuses to run as root: -u drops to the postgres user; -d daemonizes.
        /usr/sbin/pgbouncer -d -u postgres "$dir/pgbouncer.ini" >>"$dir/pgbouncer.stderr" 2>&1 \
            || fail_with_log pgbouncer "$dir/pgbouncer.stderr" "pgbouncer for shard $i did not start"
        wait_until pgbouncer "$dir/pgbouncer.log" port_open "$(pgb_port "$i")"
    done
}

pgshards_stop() {
    [[ -e $PG_DIR ]] || return 0
    pg_resolve_data_dir
    local i pid
    for ((i = 0; i < PG_SHARDS; i++)); do
        if pgb_running "$i"; then
            pid=$(cat "$(pgb_dir "$i")/pgbouncer.pid")
            log "stopping pgbouncer for shard $i (pid $pid)"
            kill "$pid"
        fi
    done
}

pgshards_status() {
    local i rc=0
    [[ -e $PG_DIR ]] && pg_resolve_data_dir
    for ((i = 0; i < PG_SHARDS; i++)); do
        if [[ -n $PG_DATA ]] && pgb_running "$i" && port_open "$(pgb_port "$i")"; then
            log "pgbouncer shard $i: running on $HOST:$(pgb_port "$i") (database notifier_shard$i, transaction pooling)"
        else
            log "pgbouncer shard $i: stopped"
            rc=1
        fi
    done
    return "$rc"
}

pgshards_urls() {
    local i urls=()
    for ((i = 0; i < PG_SHARDS; i++)); do
        urls+=("postgresql+psycopg2://notifier:notifier@$HOST:$(pgb_port "$i")/notifier_shard$i")
    done
    (IFS=,; echo "${urls[*]}")
}

# ------------------------------------------------------------------------------ kafka

kafka_ensure_java() {
    if ! command -v java >/dev/null; then
        apt_install openjdk-17-jre-headless
    fi
    local major
    major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
    ((${major%%.*} >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17 or newer; java is $major"
}

kafka_ensure_jars() {
    # Resolve kafka_2.13 and its runtime dependencies from Maven Central, once.
    [[ -f $KAFKA_HOME/libs/.complete ]] && return
    command -v mvn >/dev/null || apt_install maven
    log "fetching Kafka $KAFKA_VERSION jars into $KAFKA_HOME/libs"
    mkdir -p "$KAFKA_HOME"
    rm -rf "$KAFKA_HOME/libs"
    cat >"$KAFKA_HOME/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by notifier's scripts/services.sh: the jars of a Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.notifier</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    mvn -B -q -f "$KAFKA_HOME/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs" >"$KAFKA_HOME/mvn.log" 2>&1 \
        || { tail -n 40 "$KAFKA_HOME/mvn.log" >&2; die "could not fetch the Kafka jars (log: $KAFKA_HOME/mvn.log)"; }
    [[ -f $KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
    touch "$KAFKA_HOME/libs/.complete"
}

kafka_write_config() {
    mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/services.sh; rewritten on every start.
# Single node, combined broker and controller (KRaft), loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# Fewer internal partitions than the default 50 make the first consumer group join fast.
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
# Generated by scripts/services.sh: Kafka logs to files under .services/kafka/logs.
name = notifier-kafka
appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 20MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

kafka_java_cmd() {
    # The java command line for a Kafka entry point, with our classpath, heap and logging.
    KAFKA_JAVA=(java "${KAFKA_HEAP_OPTS[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
        -Dkafka.logs.dir="$KAFKA_DIR/logs"
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties"
        -Dlog4j2.shutdownHookEnabled=false
        -cp "$KAFKA_HOME/libs/*")
}

kafka_java() {
    # kafka_java <main class> <args...>: run a Kafka entry point in the foreground.
    kafka_java_cmd
    "${KAFKA_JAVA[@]}" "$@"
}

kafka_format_storage() {
    # Format once; a formatted log dir has meta.properties and must keep its cluster id.
    if [[ -f $KAFKA_DIR/data/meta.properties ]]; then
        return
    fi
    local cluster_id
    if [[ -s $KAFKA_DIR/cluster-id ]]; then
        cluster_id=$(<"$KAFKA_DIR/cluster-id")
    else
        cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid | tail -n 1)
        printf '%s\n' "$cluster_id" >"$KAFKA_DIR/cluster-id"
    fi
    log "formatting Kafka storage (cluster id $cluster_id)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
        >"$KAFKA_DIR/logs/format.log" 2>&1 \
        || { tail -n 40 "$KAFKA_DIR/logs/format.log" >&2; die "Kafka storage format failed"; }
}

kafka_running() {
    pid_alive "$KAFKA_DIR/kafka.pid" kafka.Kafka
}

kafka_answers() {
    # The broker answers a metadata request (or, without confluent-kafka, accepts TCP).
    port_open "$KAFKA_PORT" || return 1
    if [[ -x $PYTHON ]] && "$PYTHON" -c 'import confluent_kafka' 2>/dev/null; then
        timeout 15 "$PYTHON" - "$HOST:$KAFKA_PORT" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
metadata = admin.list_topics(timeout=5)
sys.exit(0 if metadata.brokers else 1)
EOF
    fi
}

kafka_start() {
    if kafka_running; then
        log "kafka already running (pid $(<"$KAFKA_DIR/kafka.pid"))"
        wait_until kafka "$KAFKA_DIR/logs/server.log" kafka_answers
        return
    fi
    if port_open "$KAFKA_PORT"; then
        log "kafka already answering on $HOST:$KAFKA_PORT (not started from this checkout)"
        return
    fi
    kafka_ensure_java
    kafka_ensure_jars
    kafka_write_config
    kafka_format_storage
    log "starting kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
    kafka_java_cmd
    start_server kafka "$KAFKA_DIR/kafka.pid" kafka.Kafka "$KAFKA_DIR/logs/kafka.out" \
        "$KAFKA_DIR/logs/server.log" kafka_answers \
        "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties"
}

kafka_stop() {
    if ! kafka_running; then
        if port_open "$KAFKA_PORT"; then
            log "kafka answers on $HOST:$KAFKA_PORT but was not started from this checkout; left alone"
        else
            log "kafka not running"
        fi
        rm -f "$KAFKA_DIR/kafka.pid"
        return 0
    fi
    local pid; pid=$(<"$KAFKA_DIR/kafka.pid")
    log "stopping kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        log "kafka did not exit within 60s; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$KAFKA_DIR/kafka.pid"
}

kafka_status() {
    if kafka_running; then
        if port_open "$KAFKA_PORT"; then
            log "kafka:    running on $HOST:$KAFKA_PORT (pid $(<"$KAFKA_DIR/kafka.pid"), Kafka $KAFKA_VERSION)"
        else
            log "kafka:    starting (pid $(<"$KAFKA_DIR/kafka.pid"), port $KAFKA_PORT not open yet)"
            return 1
        fi
    elif port_open "$KAFKA_PORT"; then
        log "kafka:    running on $HOST:$KAFKA_PORT (not started from this checkout)"
    else
        log "kafka:    stopped"
        return 1
    fi
}

# --------------------------------------------------------------------------- rabbitmq

RABBITMQ_SBIN=/usr/lib/rabbitmq/bin

rabbitmq_ensure_installed() {
    [[ -x $RABBITMQ_SBIN/rabbitmq-server && -x $RABBITMQ_SBIN/rabbitmqctl ]] && return
    apt_install rabbitmq-server
    # The package may start (or try to start) its own node on :5672; ours is a separate node
    # with its own ports, cookie and data, and the package's is left as the package set it up.
    [[ -x $RABBITMQ_SBIN/rabbitmq-server ]] || die "rabbitmq-server installed but $RABBITMQ_SBIN/rabbitmq-server is missing"
}

rabbitmq_env() {
    # The environment every RabbitMQ script (server or CLI) runs in, as an `env` command line:
    # our node only, with its own config, data, logs, cookie (HOME) and epmd; nothing read from
    # /etc/rabbitmq.
    RABBITMQ_ENV=(env HOME="$RABBITMQ_DIR"
        RABBITMQ_NODENAME="$RABBITMQ_NODE"
        RABBITMQ_CONF_ENV_FILE="$RABBITMQ_DIR/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$RABBITMQ_DIR/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$RABBITMQ_DIR/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBITMQ_DIR/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$RABBITMQ_DIR/mnesia"
        RABBITMQ_LOG_BASE="$RABBITMQ_DIR/log"
        RABBITMQ_PID_FILE="$RABBITMQ_DIR/rabbitmq.pid"
        RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT"
        ERL_EPMD_PORT="$RABBITMQ_EPMD_PORT"
        ERL_EPMD_ADDRESS="$HOST")
}

rabbitmqctl() {
    rabbitmq_env
    "${RABBITMQ_ENV[@]}" "$RABBITMQ_SBIN/rabbitmqctl" -q "$@"
}

rabbitmq_write_ctl() {
    # A rabbitmqctl for this node that works from anywhere (tests create a vhost per run with it;
    # .services/env names it as NOTIFIER_RABBITMQCTL).
    rabbitmq_env
    {
        printf '#!/bin/sh\n# Generated by scripts/services.sh: rabbitmqctl for the node %s.\nexec' "$RABBITMQ_NODE"
        printf ' %q' "${RABBITMQ_ENV[@]}" "$RABBITMQ_SBIN/rabbitmqctl" -q
        printf ' "$@"\n'
    } >"$RABBITMQ_DIR/rabbitmqctl"
    chmod 700 "$RABBITMQ_DIR/rabbitmqctl"
}

rabbitmq_write_config() {
    mkdir -p "$RABBITMQ_DIR/mnesia" "$RABBITMQ_DIR/log"
    chmod 700 "$RABBITMQ_DIR"
    if [[ ! -s $RABBITMQ_DIR/.erlang.cookie ]]; then
        (umask 077 && head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$RABBITMQ_DIR/.erlang.cookie")
    fi
    chmod 400 "$RABBITMQ_DIR/.erlang.cookie"
    : >"$RABBITMQ_DIR/rabbitmq-env.conf"
    printf '[].\n' >"$RABBITMQ_DIR/enabled_plugins"
    printf '[].\n' >"$RABBITMQ_DIR/advanced.config"
    cat >"$RABBITMQ_DIR/rabbitmq.conf" <<EOF
# Generated by scripts/services.sh; rewritten on every start.
# AMQP on loopback only. The Erlang distribution (port $RABBITMQ_DIST_PORT, for rabbitmqctl) is
# bound to loopback by RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS, its epmd by ERL_EPMD_ADDRESS.
listeners.tcp.default = $HOST:$RABBITMQ_PORT
# The first boot creates this user and vhost (the user is an administrator of the node).
default_user = notifier
default_pass = notifier
default_vhost = notifier
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.file.level = info
log.console = false
EOF
}

rabbitmq_running() {
    pid_alive "$RABBITMQ_DIR/server.pid" rabbit
}

rabbitmq_answers() {
    port_open "$RABBITMQ_PORT"
}

rabbitmq_start() {
    if rabbitmq_running; then
        log "rabbitmq already running (pid $(<"$RABBITMQ_DIR/server.pid"))"
        rabbitmq_write_ctl
        wait_until rabbitmq "$RABBITMQ_DIR/log/$RABBITMQ_NODE.log" rabbitmq_answers
        return
    fi
    if rabbitmq_answers; then
        log "rabbitmq already answering on $HOST:$RABBITMQ_PORT (not started from this checkout)"
        return
    fi
    rabbitmq_ensure_installed
    rabbitmq_write_config
    rabbitmq_write_ctl
    log "starting rabbitmq on $HOST:$RABBITMQ_PORT (node $RABBITMQ_NODE, distribution $RABBITMQ_DIST_PORT, epmd $RABBITMQ_EPMD_PORT)"
    rabbitmq_env
    # Busy-waiting schedulers would spin on a machine shared with the tests: off.
    start_server rabbitmq "$RABBITMQ_DIR/server.pid" rabbit "$RABBITMQ_DIR/log/rabbitmq.out" \
        "$RABBITMQ_DIR/log/$RABBITMQ_NODE.log" rabbitmq_answers \
        "${RABBITMQ_ENV[@]}" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none" \
        "$RABBITMQ_SBIN/rabbitmq-server"
}

rabbitmq_stop() {
    if ! rabbitmq_running; then
        if rabbitmq_answers; then
            log "rabbitmq answers on $HOST:$RABBITMQ_PORT but was not started from this checkout; left alone"
        else
            log "rabbitmq not running"
        fi
        return 0
    fi
    local pid; pid=$(<"$RABBITMQ_DIR/server.pid")
    log "stopping rabbitmq (pid $pid)"
    rabbitmqctl stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        log "rabbitmq did not exit within 60s; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Its epmd (on our port, not the system's) goes with it.
    ERL_EPMD_PORT="$RABBITMQ_EPMD_PORT" epmd -kill >/dev/null 2>&1 || true
    rm -f "$RABBITMQ_DIR/server.pid"
}

rabbitmq_status() {
    if rabbitmq_answers; then
        local owner="not started from this checkout"
        rabbitmq_running && owner="pid $(<"$RABBITMQ_DIR/server.pid")"
        log "rabbitmq: running on $HOST:$RABBITMQ_PORT ($owner; vhost notifier)"
    else
        log "rabbitmq: stopped"
        return 1
    fi
}

# -------------------------------------------------------------------------- commands

print_env() {
    cat <<EOF
export NOTIFIER_REDIS_URL=redis://$HOST:$REDIS_PORT/0
export NOTIFIER_BROKER_URL=redis://$HOST:$REDIS_PORT/1
export NOTIFIER_DATABASE_URL=postgresql+psycopg2://notifier:notifier@$HOST:$PG_PORT/notifier
export NOTIFIER_KAFKA_BOOTSTRAP_SERVERS=$HOST:$KAFKA_PORT
# RabbitMQ as the Celery broker instead of Redis: export NOTIFIER_BROKER_URL=\$NOTIFIER_RABBITMQ_URL
export NOTIFIER_RABBITMQ_URL=amqp://notifier:notifier@$HOST:$RABBITMQ_PORT/notifier
EOF
    # Only for a node this checkout started: another checkout's node has its own cookie, and the
    # tests then use the URL as given instead of a vhost of their own.
    if [[ -x $RABBITMQ_DIR/rabbitmqctl ]]; then
        echo "export NOTIFIER_RABBITMQCTL=$RABBITMQ_DIR/rabbitmqctl"
    fi
    # Only once started with --pg-shards; opt-in: NOTIFIER_DATABASE_URL stays the default.
    if [[ -e $PG_DIR ]] && pg_resolve_data_dir && pgb_running 0; then
        echo "export NOTIFIER_DATABASE_URLS_SHARDED=$(pgshards_urls)"
    fi
    # The data Redis as a cluster, for the tests and runs that ask for it (NOTIFIER_REDIS_URL stays the
    # single server: the broker cannot be a cluster, and the default suite runs against one Redis).
    if [[ -d $REDIS_CLUSTER_DIR ]]; then
        echo "export NOTIFIER_REDIS_CLUSTER_URL=$(redis_cluster_url)"
    fi
}

ALL_SERVICES=(redis postgres kafka rabbitmq)
OPTIONAL_SERVICES=(redis-cluster)  # started only when named

pick_services() {
    # pick_services [name...]: the services a command acts on, in start order (all by default).
    PICKED=()
    local name known s
    (($# > 0)) || { PICKED=("${ALL_SERVICES[@]}"); return; }
    for name in "$@"; do
        known=0
        for s in "${ALL_SERVICES[@]}" "${OPTIONAL_SERVICES[@]}"; do
            if [[ $s == "$name" ]]; then known=1; fi
        done
        ((known)) || die "unknown service $name (known: ${ALL_SERVICES[*]} ${OPTIONAL_SERVICES[*]})"
    done
    for s in "${ALL_SERVICES[@]}" "${OPTIONAL_SERVICES[@]}"; do
        for name in "$@"; do
            if [[ $s == "$name" ]]; then PICKED+=("$s"); fi
        done
    done
}

PG_SHARDS_WANTED=0

take_flags() {
    # take_flags args...: sets PG_SHARDS_WANTED and ARGS (the service names).
    ARGS=()
    local a
    for a in "$@"; do
        if [[ $a == --pg-shards ]]; then PG_SHARDS_WANTED=1; else ARGS+=("$a"); fi
    done
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "run as root: it installs packages and runs postgres as the postgres user"
    mkdir -p "$SERVICES_DIR"
    take_flags "$@"
    pick_services ${ARGS[@]+"${ARGS[@]}"}
    local s
    for s in "${PICKED[@]}"; do
        case $s in
            redis) redis_start ;;
            postgres) pg_start ;;
            kafka) kafka_start ;;
            rabbitmq) rabbitmq_start ;;
            redis-cluster) redis_cluster_start ;;
        esac
    done
    if ((PG_SHARDS_WANTED)); then pgshards_start; fi
    print_env >"$SERVICES_DIR/env"
    log "ready:"
    for s in "${PICKED[@]}"; do
        case $s in
            redis) log "  redis     $HOST:$REDIS_PORT      (data and log: $REDIS_DIR)" ;;
            postgres) log "  postgres  $HOST:$PG_PORT      (cluster: $PG_DATA)" ;;
            kafka) log "  kafka     $HOST:$KAFKA_PORT      (data, config, logs: $KAFKA_DIR)" ;;
            rabbitmq) log "  rabbitmq  $HOST:$RABBITMQ_PORT      (data, config, logs: $RABBITMQ_DIR)" ;;
            redis-cluster) log "  redis-cluster $(redis_cluster_url)      (data, logs: $REDIS_CLUSTER_DIR)" ;;
        esac
    done
    if ((PG_SHARDS_WANTED)); then log "  shards    $(pgshards_urls)   (PgBouncer, transaction pooling)"; fi
    log "  environment: source $SERVICES_DIR/env   (or: eval \"\$($0 env)\")"
}

cmd_stop() {
    take_flags "$@"
    pick_services ${ARGS[@]+"${ARGS[@]}"}
    local i
    # --pg-shards alone stops only the PgBouncers; stopping postgres stops them first.
    if ((PG_SHARDS_WANTED)) && ((${#ARGS[@]} == 0)); then
        pgshards_stop
        return
    fi
    for ((i = ${#PICKED[@]} - 1; i >= 0; i--)); do
        case ${PICKED[i]} in
            redis) redis_stop ;;
            postgres) pgshards_stop; pg_stop ;;
            kafka) kafka_stop ;;
            rabbitmq) rabbitmq_stop ;;
            redis-cluster) redis_cluster_stop ;;
        esac
    done
}

cmd_status() {
    take_flags "$@"
    pick_services ${ARGS[@]+"${ARGS[@]}"}
    local rc=0 s
    if ((PG_SHARDS_WANTED)); then pgshards_status || rc=3; fi
    for s in "${PICKED[@]}"; do
        case $s in
            redis) redis_status || rc=3 ;;
            postgres) pg_status || rc=3 ;;
            kafka) kafka_status || rc=3 ;;
            rabbitmq) rabbitmq_status || rc=3 ;;
            redis-cluster) redis_cluster_status || rc=3 ;;
        esac
    done
    return "$rc"
}

main() {
    local cmd=${1:-}
    (($# > 0)) && shift
    case "$cmd" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        env) print_env ;;
        rabbitmqctl) rabbitmqctl "$@" ;;
        *)
            sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"
            exit 2
            ;;
    esac
}

main "$@"
