# Data streamer: every target installs what it needs into .venv itself.
# `make help` lists the targets.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE_DIR ?= data/sample
OUT_DIR ?= out
SEED ?= 7
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install sample-data run-local run-local-streaming run-portable submit-flink submit-dataflow redrive backfill \
	historic test lint clean bench

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create or refresh the virtual environment (.venv) with pinned dependencies

$(SAMPLE_DIR)/.complete: $(STAMP)
	$(PY) -m tools.sample_fleet --output_dir $(SAMPLE_DIR) --seed $(SEED)
	@touch $@

sample-data: $(STAMP) ## Generate the sample fleet (SAMPLE_DIR, SEED; more options: python -m tools.sample_fleet --help)
	$(PY) -m tools.sample_fleet --output_dir $(SAMPLE_DIR) --seed $(SEED)
	@touch $(SAMPLE_DIR)/.complete

run-local: $(SAMPLE_DIR)/.complete ## Run the job over the sample fleet, delivering to local REST/DataDog/S3/Kinesis destinations
	$(PY) -m tools.run_local --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)

PORTABLE_ENVIRONMENT ?= EXTERNAL
run-portable: $(SAMPLE_DIR)/.complete ## run-local through a Beam job service and SDK worker pool (PortableRunner; outputs in out/portable)
	$(PY) -m tools.run_portable --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/portable \
		--environment_type $(PORTABLE_ENVIRONMENT)

RUN_SECONDS ?= 90
run-local-streaming: $(SAMPLE_DIR)/.complete ## Stream the sample fleet through the Pub/Sub emulator to local destinations for RUN_SECONDS (needs gcloud + Java)
	$(PY) -m tools.run_local_streaming --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/streaming \
		--run_seconds $(RUN_SECONDS)

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

STREAMS_CONFIG ?= $(OUT_DIR)/streams.local.json
REDRIVE_ARGS ?=
redrive: $(STAMP) ## Re-deliver STREAM's parked batches (STREAMS_CONFIG, OUT_DIR; REDRIVE_ARGS for more flags)
	@test -n "$(STREAM)" || { echo "usage: make redrive STREAM=<stream id>"; exit 2; }
	$(PY) -m pipelines.redrive --stream_id $(STREAM) --streams_config $(STREAMS_CONFIG) --output_dir $(OUT_DIR) \
		$(REDRIVE_ARGS)

ARCHIVE ?= $(OUT_DIR)/archive
BACKFILL_ARGS ?=
backfill: $(STAMP) ## Backfill STREAM from the archive for FROM..TO (ISO times; STREAMS_CONFIG, ARCHIVE, BACKFILL_ARGS)
	@test -n "$(STREAM)" -a -n "$(FROM)" -a -n "$(TO)" || \
		{ echo "usage: make backfill STREAM=<stream id> FROM=<ISO time> TO=<ISO time>"; exit 2; }
	$(PY) -m pipelines.backfill --stream_id $(STREAM) --from $(FROM) --to $(TO) --archive_location $(ARCHIVE) \
		--reference_dir $(SAMPLE_DIR)/reference --streams_config $(STREAMS_CONFIG) --output_dir $(OUT_DIR) \
		$(BACKFILL_ARGS)

HISTORIC_ARGS ?=
historic: $(STAMP) ## Deliver STREAM's 7 days of history from the archive, then release its held live data
	@test -n "$(STREAM)" || { echo "usage: make historic STREAM=<stream id>"; exit 2; }
	$(PY) -m pipelines.historic --stream_id $(STREAM) --archive_location $(ARCHIVE) \
		--reference_dir $(SAMPLE_DIR)/reference --streams_config $(STREAMS_CONFIG) --output_dir $(OUT_DIR) \
		$(HISTORIC_ARGS)

BENCH_ARGS ?=
bench: $(SAMPLE_DIR)/.complete ## Benchmark: baseline vs batch pipeline, memory scaling, streaming (BENCH_ARGS, e.g. --records 200000)
	$(PY) -m tools.bench $(BENCH_ARGS)

test: $(STAMP) ## Run ruff and the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

clean: ## Remove generated data, outputs and the virtual environment
	rm -rf $(VENV) $(OUT_DIR) data *.egg-info .pytest_cache .ruff_cache
