# Every target bootstraps .venv itself, so a fresh clone needs only `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,postgresql]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/newsletter --config config.toml init
	$(BIN)/newsletter --config config.toml subscribers import samples/subscribers.csv
	$(BIN)/newsletter --config config.toml run
	$(BIN)/newsletter --config config.toml preview --out outbox/preview.html
	@echo
	@echo "Messages: $(CURDIR)/outbox/ (one .eml per subscriber)"
	@echo "Preview:  $(CURDIR)/outbox/preview.html (open it in a browser)"
	@echo "Web app:  $(BIN)/newsletter --config config.toml serve   (then open http://127.0.0.1:8000/)"

# One pytest worker per core (pytest-xdist): the tests start real commands, servers and sends, and
# each worker has its own temporary folders and PostgreSQL schema.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal --durations=10

lint: $(STAMP)
	$(BIN)/ruff check newsletter tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy benchmarks/run.py  # and the dashboard benchmark it imports

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) outbox subscribers.db subscribers.db-* .pytest_cache .mypy_cache .ruff_cache
