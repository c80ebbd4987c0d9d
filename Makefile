# The two commands: `make run` (the whole stack) and `make test` (the whole suite).
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: run test setup lint format clean bench

run:
	scripts/run.sh

# The tests whose outcome depends on the broker: the job platform, the flows users see (the
# signup email and its outages, the upload pipeline, a broadcast whose worker is killed) and the
# chaos suite. `make test` runs everything on Redis, then these again on RabbitMQ.
BROKER_TESTS := tests/jobs tests/accounts/test_email_flow.py tests/accounts/test_outages.py \
	tests/media/test_pipeline.py tests/notifications/test_announcements.py tests/chaos

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)
	TEST_BROKER=rabbitmq $(PYTHON) -m pytest $(BROKER_TESTS) $(PYTEST_ARGS)

setup:
	scripts/setup.sh

# Every benchmark at a quick size; writes bench/RESULTS.md (bench/all.py).
bench: setup
	$(PYTHON) bench/all.py --quick

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(PYTHON) manage.py makemigrations --check --dry-run

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var/staticfiles .pytest_cache .ruff_cache
