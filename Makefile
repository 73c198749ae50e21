# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# The virtualenv is cached outside the clone, keyed by setup.cfg, so CI and new clones reuse it;
# on a fresh machine it is created and filled from PyPI (about 3 GB for torch 2.2.1).
PYTHON ?= python3
KEY    := $(shell sha256sum setup.cfg | cut -c1-16)
VENV   ?= $(HOME)/.cache/gnnrec/venv-$(KEY)
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: demo test bench docs install
install: $(VENV)/.deps
	@$(BIN)/pip install -q --no-deps --no-build-isolation -e . >/dev/null

$(VENV)/.deps: setup.cfg
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=64" wheel
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/gnnrec run --config configs/quickstart.yaml $(ARGS)
	$(BIN)/gnnrec partition --config configs/quickstart.yaml partition.parts=2 \
		partition.method=random-walk "partition.out={workdir}/partitions-2way" $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sampling.py --threads 1
	$(BIN)/python bench/partition.py --synthetic 1000000

# docs/configuration.md from the config's pydantic models, docs/benchmarks.md from bench/results/*.json
docs: install
	$(BIN)/python -m gnnrec.launch.reference > docs/configuration.md
	$(BIN)/python bench/report.py > docs/benchmarks.md
