# perfgraph: two entry points for a fresh machine.
#   make demo  -- create .venv, install, run the main job end to end on the embedded defaults
#   make test  -- create .venv, install, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB := out/demo/demo.db
DEMO_PIPELINE := zoo:resnet_basic_block?c_in=16&c_out=16&h=28&stride=1&w=28

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The exact torch first: it resolves to a local CPU build; a bare torch pulls several GB of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check perfgraph tests benchmarks
	$(BIN)/ruff format --check perfgraph tests benchmarks
	$(BIN)/pytest -q

# The demo: collect a small dataset of new pipelines end to end, predict it with the shipped ensemble,
# evaluate the shipped models on the shipped dataset's test split, then use the model: rank
# never-run schedules of a ResNet block and search it (benchmarking only the predicted best).
demo: $(STAMP)
	rm -rf out/demo
	$(BIN)/perfgraph collect --db $(DEMO_DB) --zoo conv2d resnet_basic_block --random 1 --seed 9000 \
		--schedules 8 --max-beam 2 --workers 2
	$(BIN)/perfgraph stats --db $(DEMO_DB)
	$(BIN)/perfgraph export --db $(DEMO_DB) --format samples --out out/demo/samples
	$(BIN)/perfgraph predict --db $(DEMO_DB) --out out/demo/predictions.csv
	$(BIN)/perfgraph stats
	$(BIN)/perfgraph evaluate --report out/demo/report
	$(BIN)/perfgraph predict --pipeline '$(DEMO_PIPELINE)' --candidates 16 --out out/demo/candidates
	$(BIN)/perfgraph schedule --pipeline '$(DEMO_PIPELINE)' --candidates 32 --measure-top 4 --rounds 2 \
		--db out/demo/tuning.db --out out/demo/schedule.py

lint: $(STAMP)
	$(BIN)/ruff check perfgraph tests benchmarks
	$(BIN)/ruff format --check perfgraph tests benchmarks

clean:
	rm -rf $(VENV) out
