#!/usr/bin/env bash
# Run the real backing services for development and tests, on loopback only:
#   Redis       127.0.0.1:16379  (Debian package redis-server)
#   PostgreSQL  127.0.0.1:15432  (Debian package postgresql; databases notifier, notifier_test)
#   Kafka       127.0.0.1:19092  (single-node KRaft, controller on 19093; jars from Maven Central)
#
# Usage: scripts/services.sh start|stop|status|env
#   start   install what is missing, start what is not running, wait until each answers
#   stop    stop all three; harmless when they are not running
#   status  print each one's state; exit 0 only when all three answer
#   env     print the export lines that point notifier at these services
#
# State, data and logs live under <repo>/.services/ (gitignored). Kafka's jars are cached
# outside the repo in ${NOTIFIER_CACHE:-$HOME/.cache/notifier}/kafka-<version>/libs.
#
# Environment knobs:
#   NOTIFIER_CACHE                  jar cache root (default: $HOME/.cache/notifier)
#   NOTIFIER_SERVICES_TIMEOUT       seconds to wait for each service to answer (default: 120)
#   PYTHON                          interpreter used for the Kafka readiness check
#                                   (default: <repo>/.venv/bin/python; TCP check if absent)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="$ROOT/.services"
CACHE_DIR="${NOTIFIER_CACHE:-$HOME/.cache/notifier}"
TIMEOUT="${NOTIFIER_SERVICES_TIMEOUT:-120}"
# A server that exits while starting is started again, this many times in all, after pauses of
# 5, 10, 15 ... seconds (a minute of retrying in all at the default).
START_ATTEMPTS=5
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

HOST=127.0.0.1
REDIS_PORT=16379
PG_PORT=15432
KAFKA_PORT=19092
KAFKA_CONTROLLER_PORT=19093

# Kafka 4.x brokers run on Java 17. Kafka logs through log4j2 and still calls the
# slf4j 1.7 API, so the binding is log4j-slf4j-impl at the log4j version Kafka pins.
KAFKA_VERSION=4.4.0
KAFKA_LOG4J_VERSION=2.25.5
KAFKA_HEAP_OPTS=(-Xms128m -Xmx512m)

REDIS_DIR="$SERVICES_DIR/redis"
PG_DIR="$SERVICES_DIR/postgres"
KAFKA_DIR="$SERVICES_DIR/kafka"
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

redis_start() {
    redis_ensure_installed
    if redis_running; then
        if pid_alive "$REDIS_DIR/redis.pid" redis-server; then
            log "redis already running (pid $(<"$REDIS_DIR/redis.pid"))"
        else
            log "redis already answering on $HOST:$REDIS_PORT (not started from this checkout)"
        fi
        return
    fi
    mkdir -p "$REDIS_DIR/data"
    cat >"$REDIS_DIR/redis.conf" <<EOF
# Generated by scripts/services.sh; rewritten on every start.
bind $HOST
port $REDIS_PORT
protected-mode yes
daemonize no
logfile $REDIS_DIR/redis.log
dir $REDIS_DIR/data
# Development and test data only: a failed snapshot (full disk, no fork) must not stop writes.
stop-writes-on-bgsave-error no
EOF
    log "starting redis on $HOST:$REDIS_PORT"
    start_server redis "$REDIS_DIR/redis.pid" redis-server "$REDIS_DIR/redis.out" "$REDIS_DIR/redis.log" \
        redis_running redis-server "$REDIS_DIR/redis.conf"
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
        log "redis:    running on $HOST:$REDIS_PORT ($owner)"
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
    real="$home/notifier-$(printf '%s' "$ROOT" | md5sum | cut -c1-12)"
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
    # A dev/test cluster: loopback TCP only, no unix socket (a deep checkout path would
    # overflow the socket path limit, and /var/run/postgresql belongs to the system cluster).
    as_postgres tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

# --- scripts/services.sh
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = ''
synchronous_commit = off
EOF
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
        else
            log "postgres already answering on $HOST:$PG_PORT (not started from this checkout)"
        fi
    else
        pg_init_cluster
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
        log "postgres: running on $HOST:$PG_PORT (databases notifier, notifier_test; role notifier)"
    else
        log "postgres: stopped"
        return 1
    fi
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

# -------------------------------------------------------------------------- commands

print_env() {
    cat <<EOF
export NOTIFIER_REDIS_URL=redis://$HOST:$REDIS_PORT/0
export NOTIFIER_BROKER_URL=redis://$HOST:$REDIS_PORT/1
export NOTIFIER_DATABASE_URL=postgresql+psycopg2://notifier:notifier@$HOST:$PG_PORT/notifier
export NOTIFIER_KAFKA_BOOTSTRAP_SERVERS=$HOST:$KAFKA_PORT
EOF
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "run as root: it installs packages and runs postgres as the postgres user"
    mkdir -p "$SERVICES_DIR"
    redis_start
    pg_start
    kafka_start
    print_env >"$SERVICES_DIR/env"
    log "ready:"
    log "  redis     $HOST:$REDIS_PORT      (data and log: $REDIS_DIR)"
    log "  postgres  $HOST:$PG_PORT      (cluster: $PG_DATA)"
    log "  kafka     $HOST:$KAFKA_PORT      (data, config, logs: $KAFKA_DIR)"
    log "  environment: source $SERVICES_DIR/env   (or: eval \"\$($0 env)\")"
}

cmd_stop() {
    kafka_stop
    pg_stop
    redis_stop
}

cmd_status() {
    local rc=0
    redis_status || rc=3
    pg_status || rc=3
    kafka_status || rc=3
    return "$rc"
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) print_env ;;
        *)
            sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"
            exit 2
            ;;
    esac
}

main "$@"
