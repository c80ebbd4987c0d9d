# The two commands: `make run` (the whole stack) and `make test` (the whole suite).
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: run test setup lint format clean

run:
	scripts/run.sh

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

setup:
	scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(PYTHON) manage.py makemigrations --check --dry-run

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var/staticfiles .pytest_cache .ruff_cache
