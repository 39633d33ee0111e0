# prunesearch: `make demo` serves the API and dashboard and runs the demo job through them, `make test` runs lint, types and tests.
# Both create .venv and install everything on a fresh machine (docker/install-python.sh).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml docker/install-python.sh
	VENV=$(VENV) bash docker/install-python.sh
	touch $@

demo: install
	$(BIN)/python -m service.demo --dir runs/demo

lint: install
	PATH=$(BIN):$$PATH bash docker/validate.sh
	$(BIN)/ruff check service agents search_spaces measurement tests bench
	$(BIN)/mypy

pytest: install
	bash docker/install-browser.sh
	PRUNESEARCH_REQUIRE_POSTGRES=1 PRUNESEARCH_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -W ignore::UserWarning --durations=15

test: lint pytest

bench: install
	$(BIN)/python bench/latency_fidelity.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
