# The two commands: `make demo` and `make test` (plus `make ui`). Everything installs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
SCALE ?= 1
SEED ?= 42
SF ?= 1

export FEDLAKE_HOME ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(FEDLAKE_HOME)/dagster_home
export FEDLAKE_SILOS ?= $(CURDIR)/silos.yaml
# No telemetry, no analytics, no downloads at run time.
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: install spark java browser demo test prod-up prod-down ui dagster-home clean bench-agent bench bench-tpcds bench-load bench-cli bench-scaleout

DBT_MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := $(shell find dbt_project -type f \( -name '*.sql' -o -name '*.yml' -o -name '*.py' \) -not -path 'dbt_project/target/*' -not -path 'dbt_project/logs/*')

install: $(STAMP) $(DBT_MANIFEST)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

# dbt's manifest is built at install time (`dbt parse`, offline), never when Dagster loads.
$(DBT_MANIFEST): $(STAMP) $(DBT_SOURCES) assets/dbt_marts.py
	$(PY) -m assets.dbt_marts parse

# Silos with `engine: spark` need pyspark (an optional extra) and a Java runtime; only `make test` installs them.
SPARK_STAMP := $(VENV)/.spark-$(shell cat requirements-spark.lock | sha1sum | cut -c1-12)
spark: $(SPARK_STAMP) java
$(SPARK_STAMP): $(STAMP) requirements-spark.lock
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-spark.lock
	rm -f $(VENV)/.spark-*
	touch $@

java:
	@command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null)

# The browser test drives Debian's chromium with Playwright.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

dagster-home:
	mkdir -p $(DAGSTER_HOME)
	cp deploy/local/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install dagster-home
	$(VENV)/bin/fedlake seed --scale $(SCALE) --seed $(SEED)
	$(PY) -m platform_defs.demo

test: install spark browser
	$(PY) -m pytest

# The prod-like deployment on this machine (PostgreSQL over TCP, S3, TLS agents, Dagster on PostgreSQL);
# `source $(PROD_DIR)/stack.env` afterwards. DAGSTER=0 leaves Dagster out.
PROD_DIR ?= $(FEDLAKE_HOME)/prod
DAGSTER ?= 1
prod-up: install
	$(VENV)/bin/fedlake up --dir $(PROD_DIR) $(if $(filter 1,$(DAGSTER)),--dagster --dagster-port $(or $(PORT),3000))

prod-down:
	$(VENV)/bin/fedlake down --dir $(PROD_DIR)

# `make ui PORT=3001` when 3000 is taken.
ui: install dagster-home
	$(VENV)/bin/dagster dev -w workspace.yaml -p $(or $(PORT),3000)

clean:
	rm -rf $(FEDLAKE_HOME)

bench-agent: install
	mkdir -p bench/results
	$(PY) bench/agent_throughput.py --scale $(SCALE)

bench: install
	mkdir -p bench/results
	$(PY) bench/credit_features.py --scale $(SCALE)

# Geo-split TPC-DS: the 99 queries through fedlake over three silos vs co-located DuckDB (SF=0.1 to try).
bench-tpcds: install
	mkdir -p bench/results
	$(PY) bench/tpcds.py --sf $(SF)

# N = 1, 10, 25, 50 concurrent federated queries against the agents as Flight processes.
bench-load: install
	mkdir -p bench/results
	$(PY) bench/load.py --scale $(SCALE)

# A trivial query from a cold `fedlake query` process.
bench-cli: install
	mkdir -p bench/results
	$(PY) bench/cli_latency.py

# The credit workload with us_lake's fragments on Spark (local[2]) vs its DuckDB; install size, start-up.
.PHONY: bench-spark
bench-spark: install spark
	mkdir -p bench/results
	$(PY) bench/spark_silo.py --scale $(SCALE)

# Planning, the credit workload and a training round for KS regional silos holding the same bank.
KS ?= 3 6 12
bench-scaleout: install
	mkdir -p bench/results
	$(PY) bench/scaleout.py --scale $(SCALE) --ks "$(KS)"
