# Data streamer: every target installs what it needs into .venv itself.
# `make help` lists the targets. Each local target names its runner (tools/runners.py):
# batch runs on Beam's FnApiRunner, streaming on the BundleBasedDirectRunner with the
# workarounds of tools/direct_runner; never the plain DirectRunner, which would first try
# Prism (a binary it downloads) and so run on another runner wherever GitHub is reachable.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE_DIR ?= data/sample
OUT_DIR ?= out
SEED ?= 7
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install sample-data run-local run-portal run-local-streaming run-portable run-flink run-flink-streaming flink-cluster local-destinations status submit-flink \
	submit-dataflow redrive backfill historic test test-fast lint clean bench chromium postgres

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.py requirements-dev.txt requirements-portal.txt constraints.txt
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing the pinned dependencies into $(VENV) (about 1.2 GB the first time; pip lists each package)"
	set -o pipefail; $(PY) -m pip install --disable-pip-version-check --progress-bar off -c constraints.txt \
		-e . -r requirements-portal.txt -r requirements-dev.txt | { grep -E '^(Collecting|Successfully installed)' || true; }
	@touch $(STAMP)
	@echo "$(VENV) is ready"

install: $(STAMP) ## Create or refresh the virtual environment (.venv) with pinned dependencies

$(SAMPLE_DIR)/.complete: $(STAMP)
	$(PY) -m tools.sample_fleet --output_dir $(SAMPLE_DIR) --seed $(SEED)
	@touch $@

sample-data: $(STAMP) ## Generate the sample fleet (SAMPLE_DIR, SEED; more options: python -m tools.sample_fleet --help)
	$(PY) -m tools.sample_fleet --output_dir $(SAMPLE_DIR) --seed $(SEED)
	@touch $(SAMPLE_DIR)/.complete

KEEP_PORTAL ?= auto
run-local: $(SAMPLE_DIR)/.complete ## Run the job (FnApiRunner) over the sample fleet, delivering to local REST/DataDog/S3/Kinesis destinations, with the portal beside them (KEEP_PORTAL=auto|yes|no)
	$(PY) -m tools.run_local --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR) --keep_portal $(KEEP_PORTAL)

run-portal: $(STAMP) ## Serve the portal (API and Data Streamer pages) on the stream store of make run-local (out/portal.db) until Ctrl-C
	$(PY) -m tools.local_portal --output_dir $(OUT_DIR)

PORTABLE_ENVIRONMENT ?= EXTERNAL
run-portable: $(SAMPLE_DIR)/.complete ## run-local on the PortableRunner through Beam's job service and an SDK worker pool (out/portable)
	$(PY) -m tools.run_portable --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/portable \
		--environment_type $(PORTABLE_ENVIRONMENT)

run-flink: $(SAMPLE_DIR)/.complete ## run-local on Flink: FlinkRunner on [local] (a mini-cluster in Beam's Flink job server) or FLINK_MASTER=host:port (Java + Maven; out/flink)
	$(PY) -m tools.run_flink --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/flink \
		$(if $(FLINK_MASTER),--flink_master=$(FLINK_MASTER))

flink-cluster: $(STAMP) ## A standalone Flink cluster (JobManager + TaskManager JVMs, REST on localhost:8081) until Ctrl-C
	$(PY) -m tools.flink.cluster --directory $(OUT_DIR)/flink-cluster

RUN_SECONDS ?= 90
run-local-streaming: $(SAMPLE_DIR)/.complete ## Stream the sample fleet through the Pub/Sub emulator (BundleBasedDirectRunner) for RUN_SECONDS (gcloud + Java)
	$(PY) -m tools.run_local_streaming --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/streaming \
		--run_seconds $(RUN_SECONDS)

run-flink-streaming: $(SAMPLE_DIR)/.complete ## run-local-streaming on Flink [local] (FlinkRunner, cross-language Pub/Sub read, PeriodicImpulse ticks, checkpoints) for RUN_SECONDS of publishing (gcloud + Java + Maven)
	$(PY) -m tools.run_flink_streaming --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/flink-streaming \
		--run_seconds $(RUN_SECONDS) $(if $(FLINK_MASTER),--flink_master=$(FLINK_MASTER))

local-destinations: $(SAMPLE_DIR)/.complete ## Start the local destinations alone until Ctrl-C; writes $(OUT_DIR)/streams.local.json for them
	$(PY) -m tools.local_streams --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)

status: $(STAMP) ## Print the stream status overview of the last local run (STATUS_LOCATION, default $(OUT_DIR)/status)
	$(PY) -m pipelines.status --status_location $(or $(STATUS_LOCATION),$(OUT_DIR)/status)

# Deployment (submit-flink, submit-dataflow): shared locations every worker reaches.
JOB_NAME ?= datastreamer
DEPLOY_ARGS = $(if $(EVENTS_SUBSCRIPTION),--events_subscription=$(EVENTS_SUBSCRIPTION)) \
	$(if $(USAGE_SUBSCRIPTION),--usage_subscription=$(USAGE_SUBSCRIPTION)) \
	--reference_dir=$(REFERENCE_LOCATION) --streams_config=$(STREAMS_LOCATION) --output_dir=$(OUTPUT_LOCATION) \
	$(if $(ARCHIVE_LOCATION),--archive_location=$(ARCHIVE_LOCATION)) --job_name=$(JOB_NAME) \
	$(if $(DRY_RUN),--dry_run) $(SUBMIT_ARGS)
DEPLOY_USAGE = EVENTS_SUBSCRIPTION=projects/<p>/subscriptions/<s> USAGE_SUBSCRIPTION=... \
	REFERENCE_LOCATION=gs://... STREAMS_LOCATION=gs://... OUTPUT_LOCATION=gs://... [ARCHIVE_LOCATION=gs://...] \
	[JOB_NAME=datastreamer] [DRY_RUN=1] [SUBMIT_ARGS=...]

submit-flink: $(STAMP) ## Submit the streaming job to Flink: FLINK_MASTER=host:port (or JOB_ENDPOINT=) + deployment vars (README)
	@test -n "$(FLINK_MASTER)$(JOB_ENDPOINT)" -a -n "$(REFERENCE_LOCATION)" -a -n "$(STREAMS_LOCATION)" \
		-a -n "$(OUTPUT_LOCATION)" || { echo "usage: make submit-flink FLINK_MASTER=host:port (or JOB_ENDPOINT=host:port)" \
		"$(DEPLOY_USAGE)"; exit 2; }
	$(PY) -m pipelines.submit flink \
		$(if $(FLINK_MASTER),--flink_master=$(FLINK_MASTER),--job_endpoint=$(JOB_ENDPOINT)) $(DEPLOY_ARGS)

submit-dataflow: $(STAMP) ## Submit the streaming job to Dataflow: PROJECT= REGION= TEMP_LOCATION=gs://... + deployment vars (README)
	@test -n "$(PROJECT)" -a -n "$(REGION)" -a -n "$(TEMP_LOCATION)" -a -n "$(REFERENCE_LOCATION)" \
		-a -n "$(STREAMS_LOCATION)" -a -n "$(OUTPUT_LOCATION)" || { echo "usage: make submit-dataflow PROJECT=<project>" \
		"REGION=<region> TEMP_LOCATION=gs://... [UPDATE=1] $(DEPLOY_USAGE)"; exit 2; }
	$(PY) -m pipelines.submit dataflow --project=$(PROJECT) --region=$(REGION) --temp_location=$(TEMP_LOCATION) \
		$(if $(UPDATE),--update) $(DEPLOY_ARGS)

# redrive, backfill and historic run the job's commands through tools.local_job: the local
# destinations' placeholder credentials, --allow_insecure_destinations (they are
# http://127.0.0.1) and the batch runner. The destinations must be up: make local-destinations
# (which points the streams of the portal's store at them, as their ports change each start).
# The streams are where make run-local left them: the portal's store (out/portal.db, so
# the portal shows what these commands did) when there is one and STREAMS_CONFIG is not
# given on the command line; else STREAMS_CONFIG. Streams made in the portal carry sealed
# credentials: the local portal's sealing key opens them.
STREAMS_CONFIG ?= $(OUT_DIR)/streams.local.json
PORTAL_DB ?= $(OUT_DIR)/portal.db
STREAMS_ARGS = $(if $(and $(wildcard $(PORTAL_DB)),$(if $(filter command line,$(origin STREAMS_CONFIG)),,yes)),--streams_db sqlite:///$(abspath $(PORTAL_DB)),--streams_config $(STREAMS_CONFIG))
LOCAL_JOB = DATASTREAMER_SEALING_KEY="$$(cat $(OUT_DIR)/portal/sealing.key 2>/dev/null)" $(PY) -m tools.local_job
REDRIVE_ARGS ?=
redrive: $(STAMP) ## Re-deliver STREAM's parked batches to the local destinations (STREAMS_CONFIG, OUT_DIR, REDRIVE_ARGS)
	@test -n "$(STREAM)" || { echo "usage: make redrive STREAM=<stream id>"; exit 2; }
	$(LOCAL_JOB) pipelines.redrive --stream_id $(STREAM) $(STREAMS_ARGS) --output_dir $(OUT_DIR) \
		$(REDRIVE_ARGS)

ARCHIVE ?= $(OUT_DIR)/archive
BACKFILL_ARGS ?=
backfill: $(STAMP) ## Backfill STREAM from the archive for FROM..TO to the local destinations (ISO times; BACKFILL_ARGS)
	@test -n "$(STREAM)" -a -n "$(FROM)" -a -n "$(TO)" || \
		{ echo "usage: make backfill STREAM=<stream id> FROM=<ISO time> TO=<ISO time>"; exit 2; }
	$(LOCAL_JOB) pipelines.backfill --stream_id $(STREAM) --from $(FROM) --to $(TO) --archive_location $(ARCHIVE) \
		--reference_dir $(SAMPLE_DIR)/reference $(STREAMS_ARGS) --output_dir $(OUT_DIR) \
		$(BACKFILL_ARGS)

# historic waits after the marker only while a streaming job writes status to the status
# location (it says so); SETTLE_SECONDS bounds that wait (default: twice the refresh interval).
SETTLE_SECONDS ?=
HISTORIC_ARGS ?=
historic: $(STAMP) ## Deliver STREAM's 7 days of history to the local destinations, then release its held live data
	@test -n "$(STREAM)" || { echo "usage: make historic STREAM=<stream id>"; exit 2; }
	$(LOCAL_JOB) pipelines.historic $(if $(SETTLE_SECONDS),--settle_seconds $(SETTLE_SECONDS)) --stream_id $(STREAM) --archive_location $(ARCHIVE) \
		--reference_dir $(SAMPLE_DIR)/reference $(STREAMS_ARGS) --output_dir $(OUT_DIR) \
		$(HISTORIC_ARGS)

BENCH_ARGS ?=
bench: $(SAMPLE_DIR)/.complete ## Benchmark against baselines on the local runners and Flink [local]: batch (FnApiRunner), streaming (BundleBasedDirectRunner) (BENCH_ARGS)
	$(PY) -m tools.bench $(BENCH_ARGS)

# The database tests start throwaway PostgreSQL servers (tools/postgres.py) from the binaries of
# Debian's postgresql package, /usr/lib/postgresql/<version>/bin; nothing to do when they are there.
postgres: ## Install Debian's PostgreSQL server (package postgresql) for the database tests, unless installed
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		sudo=$$(test "$$(id -u)" -eq 0 || echo sudo); \
		echo "installing Debian's postgresql package (no /usr/lib/postgresql/*/bin/initdb)"; \
		$$sudo apt-get update && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
	fi

# make test runs in two phases, so that no timing a test asserts competes with another test:
# 1. the tests marked `alone` (latency against a baseline, time to stop, a bound on a timeout
#    or a budget; e2e and tools, also the few unit and composite ones), one after the other,
#    at normal priority; beside them, at the lowest CPU priority (nice 19), the rest of the unit
#    and composite tiers and the Flink lane: the `flink` tests (Flink JVMs: job servers, standalone
#    clusters), then the `beside` tests (mostly waiting: a kill and Pub/Sub's redelivery
#    deadline); they take the core the alone tests leave idle, and yield it whenever those want it;
# 2. once the alone tests are done, the other e2e and tools tests, also at nice 19, beside the
#    Flink lane still running: the two share the cores equally, as nothing timed is left.
# The logs of the unit and composite tiers and of the Flink lane are kept in $(OUT_DIR), and
# their summaries printed at the end. (Not xdist's --dist loadgroup: with pytest 9.2 and xdist
# 3.8 its groups are not kept.)
LANE_LOGS = $(OUT_DIR)/test-unit-composite.log $(OUT_DIR)/test-flink.log
test: $(STAMP) chromium postgres ## Run ruff and every test tier: unit, composite, e2e, tools (what CI runs); installs Debian's chromium and postgresql when missing
	$(VENV)/bin/ruff check .
	@mkdir -p $(OUT_DIR)
	@echo "=== phase 1: the tests that assert timings, alone; at nice 19 beside them the rest of the unit and" \
		"composite tiers ($(OUT_DIR)/test-unit-composite.log) and the Flink lane ($(OUT_DIR)/test-flink.log)"
	@nice -n 19 $(PY) -m pytest -p no:cacheprovider -m "(unit or composite) and not alone" $(PYTEST_ARGS) \
		> $(OUT_DIR)/test-unit-composite.log 2>&1 & quick=$$!; \
	nice -n 19 $(PY) -m pytest -p no:cacheprovider -m "(e2e or tools) and (flink or beside) and not alone" $(PYTEST_ARGS) \
		> $(OUT_DIR)/test-flink.log 2>&1 & flink=$$!; \
	$(PY) -m pytest -m "alone" $(PYTEST_ARGS); alone=$$?; \
	echo "=== phase 2: the other e2e and tools tests (nice 19, as the Flink tests still running)"; \
	nice -n 19 $(PY) -m pytest -p no:cacheprovider -m "(e2e or tools) and not alone and not flink and not beside" \
		$(PYTEST_ARGS); rest=$$?; \
	wait $$flink; flink=$$?; wait $$quick; quick=$$?; \
	for log in $(LANE_LOGS); do echo "--- $$log:"; tail -n 45 $$log; done; \
	echo "=== exit statuses: alone $$alone, flink $$flink, unit and composite $$quick, other e2e and tools $$rest"; \
	test $$alone -eq 0 -a $$flink -eq 0 -a $$quick -eq 0 -a $$rest -eq 0

# test-fast spreads its tests over two worker processes (pytest-xdist).
test-fast: $(STAMP) ## Run ruff and the unit and composite tiers (two workers; 83 to 90 s here)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "unit or composite" -n 2 $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

# The browser tests (tools/browser.py) run Debian's Chromium through Playwright: Playwright's
# own download (`playwright install`) needs the internet. Not a prerequisite of any target.
# apt-get update only when the install fails (package lists missing or stale).
APT_GET = $(if $(filter 0,$(shell id -u)),,sudo )apt-get
chromium: ## Install Debian's chromium for the browser tests (apt-get, with sudo when not root) unless /usr/bin/chromium is there
	@if [ -x /usr/bin/chromium ]; then echo "/usr/bin/chromium is installed"; else \
		$(APT_GET) install -y --no-install-recommends chromium || \
		{ $(APT_GET) update && $(APT_GET) install -y --no-install-recommends chromium; }; fi

clean: ## Remove generated data, outputs and the virtual environment
	rm -rf $(VENV) $(OUT_DIR) data *.egg-info .pytest_cache .ruff_cache
