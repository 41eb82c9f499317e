# notifier — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo dev test test-rabbitmq test-redis-cluster services services-stop services-status install tools bench bench-cluster clean flower chaos

# Each test run gets its own database (and Redis databases or RabbitMQ vhost: tests/integration/environment.py).
TEST_ENV := . .services/env && export NOTIFIER_DATABASE_URL=$${NOTIFIER_DATABASE_URL%/notifier}/notifier_test
# The modules that run a second time with RabbitMQ as the broker.
RABBITMQ_TESTS := tests/integration/test_pipeline.py tests/integration/test_rabbitmq_broker.py
# The modules that run with the data Redis a Redis Cluster (3 masters + 3 replicas; the broker stays one Redis).
REDIS_CLUSTER_TESTS := tests/integration/test_redis_cluster.py tests/integration/test_pipeline.py \
	tests/integration/test_redis_cluster_failover.py

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run a handful of notifications through real workers on the embedded setup.
demo: $(STAMP)
	$(VENV)/bin/notifier demo

## The local loop on the embedded setup: sandbox, worker, beat, API and Flower until Ctrl-C
## (prints the URLs and an API key); e.g. DEV_ARGS=--free-ports when the default ports are taken.
dev: $(STAMP)
	$(VENV)/bin/notifier dev $(DEV_ARGS)

## The whole suite against real Redis, PostgreSQL and Kafka, started here; then the pipeline
## modules again with RabbitMQ (quorum queues) as the Celery broker.
test: $(STAMP) services tools
	$(TEST_ENV) && $(PY) -m pytest $(PYTEST_ARGS)
	$(TEST_ENV) && export NOTIFIER_BROKER_URL=$$NOTIFIER_RABBITMQ_URL && $(PY) -m pytest $(RABBITMQ_TESTS)
	$(MAKE) test-redis-cluster PYTEST_ARGS=

## Only the Redis Cluster pass: starts the cluster (scripts/services.sh start redis-cluster), then the cluster's
## own tests, the pipeline's module and the failover run (a master SIGKILLed mid-run) against it; about a minute.
test-redis-cluster: $(STAMP) services
	PYTHON=$(PY) bash scripts/services.sh start redis-cluster
	$(TEST_ENV) && export NOTIFIER_TEST_REDIS_CLUSTER=1 && $(PY) -m pytest $(REDIS_CLUSTER_TESTS) $(PYTEST_ARGS)

## Only the RabbitMQ pass.
test-rabbitmq: $(STAMP) services
	$(TEST_ENV) && export NOTIFIER_BROKER_URL=$$NOTIFIER_RABBITMQ_URL && $(PY) -m pytest $(RABBITMQ_TESTS) $(PYTEST_ARGS)

## The checkers the ops tests run: promtool (the alert rules) and docker-compose (the compose file), from Debian.
tools:
	bash scripts/ops_tools.sh

services: $(STAMP)
	PYTHON=$(PY) bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

services-status:
	bash scripts/services.sh status

## Flower against the broker in the environment (e.g. `. .services/env`); basic auth from
## NOTIFIER_FLOWER_BASIC_AUTH=user:password, or FLOWER_ARGS=--no-auth on loopback for local development.
flower: $(STAMP)
	$(VENV)/bin/notifier flower $(FLOWER_ARGS)

bench: $(STAMP) services
	. .services/env && $(PY) -m bench $(BENCH_ARGS)

## The same benchmark on the scale-out topology, all on loopback: the data Redis a Redis Cluster (3 masters,
## 3 replicas), PostgreSQL as 2 shards each behind PgBouncer (transaction pooling), Kafka topics of
## 6 partitions, 2 bridges per lane (docs/scaling.md). Ends with one JSON line.
bench-cluster: $(STAMP) services
	PYTHON=$(PY) bash scripts/services.sh start --pg-shards redis-cluster
	. .services/env && $(PY) -m bench --topology cluster $(BENCH_ARGS)

## The fault campaign (docs/chaos.md): private Redis, PostgreSQL and Kafka on loopback ports of its own
## (never the shared ones), one fault per scenario; e.g. CHAOS_ARGS='--scenario baseline'.
chaos: $(STAMP)
	$(PY) -m chaos $(CHAOS_ARGS)

clean:
	rm -rf var
