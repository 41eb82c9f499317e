"""Private Redis, PostgreSQL and Kafka for the campaign, configured as scripts/services.sh does.

The configuration is read out of services.sh at run time (its redis.conf and postgresql.conf
heredocs, Kafka's server.properties, log4j2 file, version, heap and java flags), with only the
ports and directories replaced, so the campaign measures what main configures and follows it
when it changes. The shared servers (16379, 15432, 19092) are never touched: every port here
is checked against them, and every process here is one this module started.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES_SH = ROOT / "scripts" / "services.sh"
HOST = "127.0.0.1"
SHARED_PORTS = frozenset({16379, 15432, 19092, 19093})


class ServiceError(RuntimeError):
    """A private service did not start, or services.sh no longer reads as expected."""


@dataclass(frozen=True)
class ServicesConfig:
    """What services.sh configures, as templates still holding its shell variables."""

    redis_conf: str
    pg_conf: str
    kafka_properties: str
    kafka_log4j: str
    kafka_version: str
    kafka_java: str  # the body of KAFKA_JAVA=( ... )
    kafka_heap_opts: tuple[str, ...]


def _heredoc(text: str, opener: str) -> str:
    """The body of the heredoc on the line containing `opener` (up to its EOF line)."""
    match = re.search(re.escape(opener) + r"[^\n]*<<'?EOF'?\n(.*?)\nEOF\n", text, re.S)
    if not match:
        raise ServiceError(f"{SERVICES_SH}: no heredoc after {opener!r}; update chaos/services.py")
    return match.group(1)


def _assignment(text: str, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", text, re.M)
    if not match:
        raise ServiceError(f"{SERVICES_SH}: no {name}=...; update chaos/services.py")
    return match.group(1).strip()


def read_services_sh(path: Path = SERVICES_SH) -> ServicesConfig:
    """Read the server configuration out of scripts/services.sh."""
    text = path.read_text()
    java = re.search(r"KAFKA_JAVA=\((.*?)\)\n", text, re.S)
    if not java:
        raise ServiceError(f"{SERVICES_SH}: no KAFKA_JAVA=( ... ); update chaos/services.py")
    return ServicesConfig(
        redis_conf=_heredoc(text, 'cat >"$REDIS_DIR/redis.conf"'),
        pg_conf=_heredoc(text, 'block=$(cat'),  # pg_write_config's block for postgresql.conf
        kafka_properties=_heredoc(text, 'cat >"$KAFKA_DIR/server.properties"'),
        kafka_log4j=_heredoc(text, 'cat >"$KAFKA_DIR/log4j2.properties"'),
        kafka_version=_assignment(text, "KAFKA_VERSION"),
        kafka_java=java.group(1),
        kafka_heap_opts=tuple(_assignment(text, "KAFKA_HEAP_OPTS").strip("()").split()),
    )


def substitute(template: str, values: dict[str, str]) -> str:
    """Replace $NAME and ${NAME} as the shell would; a name not given is an error, not an empty string."""
    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ServiceError(f"services.sh uses ${name}, which chaos/services.py does not know; update it")
        return values[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, template)


def settings_of(conf: str, comment: str = "#") -> list[str]:
    """The setting lines of a config text (no comments, no blank lines): for the campaign's header."""
    return [line.strip() for line in conf.splitlines() if line.strip() and not line.strip().startswith(comment)]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _wait(what: str, ready, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not answering yet, whatever the client says
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise ServiceError(f"{what} not ready within {timeout_s:.0f}s{' (exited)' if proc and proc.poll() is not None else ''}"
                       f"\n{tail}")


def _check_port(port: int) -> None:
    if port in SHARED_PORTS:
        raise ServiceError(f"port {port} belongs to the shared services; the campaign never uses it")
    if port_open(port):
        raise ServiceError(f"something already listens on {HOST}:{port} (another chaos run?)")


def _spawn(argv: list[str], out: Path, **kw) -> subprocess.Popen:
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, **kw)


def _processes_using(path: Path) -> list[int]:
    """Pids whose command line names `path` (a redis.conf, a data directory, a server.properties in it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(int(proc.name))
    return found


def _kill_group(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return


@dataclass
class Redis:
    """A private redis-server with services.sh's redis.conf, on `port`, data in `home`/data."""

    config: ServicesConfig
    home: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def conf(self) -> str:
        # appendonly: services.sh turns AOF on later for an old RDB-only directory; a fresh one starts with it.
        return substitute(self.config.redis_conf, {"HOST": HOST, "REDIS_PORT": str(self.port),
                                                   "REDIS_DIR": str(self.home), "appendonly": "yes"})

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def start(self, timeout_s: float = 60) -> None:
        _check_port(self.port)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        (self.home / "redis.conf").write_text("# chaos: scripts/services.sh's redis.conf, ports and dirs replaced\n"
                                              + self.conf + "\n")
        self.proc = _spawn([shutil.which("redis-server") or "redis-server", str(self.home / "redis.conf")],
                           self.home / "redis.out")
        _wait("redis", self._ping, timeout_s, self.proc, self.home / "redis.log")

    def _ping(self) -> bool:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=1).ping()

    def kill(self) -> None:
        """SIGKILL: no snapshot, no AOF rewrite; what is on disk is what comes back."""
        _kill_group(self.proc)
        self.proc.wait(10)

    def shutdown(self) -> None:
        """A graceful restart's first half: SHUTDOWN (saves as configured), then wait for the exit."""
        # redis-cli, as services.sh stops it: redis-py retries a command whose connection closes,
        # and SHUTDOWN's always does.
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "-h", HOST, "-p", str(self.port), "shutdown"],
                       capture_output=True, timeout=60)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Postgres:
    """A private PostgreSQL cluster with services.sh's postgresql.conf lines, on `port`."""

    config: ServicesConfig
    home: Path
    port: int
    bin_dir: Path = field(default_factory=lambda: Path(sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: [int(x) for x in p.parts[-3].split(".")
                                                                      if x.isdigit()])[-1]).parent)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def conf(self) -> str:
        return substitute(self.config.pg_conf, {"HOST": HOST, "PG_PORT": str(self.port)})

    def url(self, db: str = "notifier", user: str = "notifier") -> str:
        password = ":notifier" if user == "notifier" else ""
        return f"postgresql+psycopg2://{user}{password}@{HOST}:{self.port}/{db}"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*runner, *argv], cwd="/", capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise ServiceError(f"{' '.join(argv[:2])} failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")
        return result

    def start(self, timeout_s: float = 60) -> None:
        """initdb (first time), services.sh's settings appended, start, role and database notifier."""
        _check_port(self.port)
        if not (self.data / "PG_VERSION").exists():
            self.home.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.home, "postgres", "postgres")
            self.home.chmod(0o700)
            self._as_postgres(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                              "--encoding=UTF8", "--no-locale")
            conf = self.data / "postgresql.conf"
            conf.write_text(conf.read_text() + "\n# --- chaos: scripts/services.sh's lines, port replaced\n"
                            + self.conf + "\n")
        self.restart(timeout_s)
        self._create_database()

    def restart(self, timeout_s: float = 60) -> None:
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data), "-l",
                          str(self.home / "postgres.log"), "-w", "-t", str(int(timeout_s)))

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every server process quits at once, without a checkpoint."""
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w",
                              "-t", "60", check=False)

    def _create_database(self) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(self.url("postgres", "postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if not conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = 'notifier'")):
                conn.execute(text("CREATE ROLE notifier LOGIN CREATEDB PASSWORD 'notifier'"))
            if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = 'notifier'")):
                conn.execute(text("CREATE DATABASE notifier OWNER notifier"))
        admin.dispose()

    def setting(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url("postgres", "postgres"))
        with engine.connect() as conn:
            value = conn.scalar(text(f"SHOW {name}"))
        engine.dispose()
        return value


@dataclass
class Kafka:
    """A private single-node KRaft Kafka from services.sh's jars, properties, heap and java flags."""

    config: ServicesConfig
    home: Path
    port: int
    controller_port: int
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def kafka_home(self) -> Path:
        cache = Path(os.environ.get("NOTIFIER_CACHE", Path.home() / ".cache" / "notifier"))
        return cache / f"kafka-{self.config.kafka_version}"

    def _values(self) -> dict[str, str]:
        return {"HOST": HOST, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.controller_port),
                "KAFKA_DIR": str(self.home), "KAFKA_HOME": str(self.kafka_home)}

    def _java(self) -> list[str]:
        body = self.config.kafka_java.replace('"${KAFKA_HEAP_OPTS[@]}"', " ".join(self.config.kafka_heap_opts))
        return shlex.split(substitute(body, self._values()))

    def start(self, timeout_s: float = 120) -> None:
        """Write the config, format the storage once, start the broker and wait for metadata."""
        for port in (self.port, self.controller_port):
            _check_port(port)
        if not (self.kafka_home / "libs" / ".complete").exists():
            raise ServiceError(f"no Kafka jars in {self.kafka_home}/libs: run `make services` once first")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(substitute(self.config.kafka_properties, self._values()) + "\n")
        (self.home / "log4j2.properties").write_text(self.config.kafka_log4j + "\n")
        if not (self.home / "data" / "meta.properties").exists():
            cluster = subprocess.run([*self._java(), "kafka.tools.StorageTool", "random-uuid"], capture_output=True,
                                     text=True, timeout=120).stdout.strip().splitlines()[-1]
            fmt = subprocess.run([*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster, "-c",
                                  str(self.home / "server.properties")], capture_output=True, text=True, timeout=120)
            if fmt.returncode != 0:
                raise ServiceError(f"Kafka storage format failed: {fmt.stdout[-1000:]}{fmt.stderr[-1000:]}")
        self.restart(timeout_s)

    def restart(self, timeout_s: float = 120) -> None:
        self.proc = _spawn([*self._java(), "kafka.Kafka", str(self.home / "server.properties")],
                           self.home / "logs" / "kafka.out")
        _wait("kafka", self._answers, timeout_s, self.proc, self.home / "logs" / "server.log")

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return bool(admin.list_topics(timeout=3).brokers)

    def kill(self) -> None:
        _kill_group(self.proc)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Services:
    """The three private services of one campaign, under `home` (var/chaos/services)."""

    home: Path
    config: ServicesConfig = field(default_factory=read_services_sh)
    redis: Redis = field(init=False)
    postgres: Postgres = field(init=False)
    kafka: Kafka = field(init=False)

    def __post_init__(self) -> None:
        # Ports picked free and held (devstack's markers) for this campaign, not well-known ones:
        # other engineers' private servers sit on 26379, 25432, 29092 too, and one of theirs
        # sending SHUTDOWN to "its" port once took a campaign's Redis down.
        from sandbox.devstack import free_port

        self.redis = Redis(self.config, self.home / "redis", port=free_port())
        self.postgres = Postgres(self.config, self.home / "postgres", port=free_port())
        self.kafka = Kafka(self.config, self.home / "kafka", port=free_port(), controller_port=free_port())

    def start(self) -> None:
        """Start from empty data directories: each campaign begins from the same place."""
        if self.home.exists():
            left = _processes_using(self.home)
            if left:
                raise ServiceError(f"processes still run from {self.home} (another chaos run, or one killed "
                                   f"without its cleanup): pids {', '.join(map(str, left))}")
            shutil.rmtree(self.home)
        self.home.mkdir(parents=True)
        self.redis.start()
        self.postgres.start()
        self.kafka.start()

    def stop(self) -> None:
        """Stop all three, each whatever happened to the others."""
        for service in (self.kafka, self.postgres, self.redis):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"chaos: stopping {type(service).__name__.lower()} failed: {exc}", flush=True)
