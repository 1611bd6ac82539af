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
.PHONY: help install sample-data run-local run-local-streaming redrive backfill historic test lint clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create or refresh the virtual environment (.venv) with pinned dependencies

$(SAMPLE_DIR)/.complete: $(STAMP)
	$(PY) -m pipelines.sample_fleet --output_dir $(SAMPLE_DIR) --seed $(SEED)
	@touch $@

sample-data: $(STAMP) ## Generate the sample fleet (SAMPLE_DIR, SEED; more options: python -m pipelines.sample_fleet --help)
	$(PY) -m pipelines.sample_fleet --output_dir $(SAMPLE_DIR) --seed $(SEED)
	@touch $(SAMPLE_DIR)/.complete

run-local: $(SAMPLE_DIR)/.complete ## Run the job over the sample fleet, delivering to local REST/DataDog/S3/Kinesis destinations
	$(PY) -m pipelines.run_local --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)

RUN_SECONDS ?= 90
run-local-streaming: $(SAMPLE_DIR)/.complete ## Stream the sample fleet through the Pub/Sub emulator to local destinations for RUN_SECONDS (needs gcloud + Java)
	$(PY) -m pipelines.run_local_streaming --sample_dir $(SAMPLE_DIR) --output_dir $(OUT_DIR)/streaming \
		--run_seconds $(RUN_SECONDS)

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

test: $(STAMP) ## Run ruff and the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

clean: ## Remove generated data, outputs and the virtual environment
	rm -rf $(VENV) $(OUT_DIR) data *.egg-info .pytest_cache .ruff_cache
