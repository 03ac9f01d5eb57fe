# Everything a fresh clone needs: `make demo` and `make test` install what they use themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install lint test test-deaths test-fuzz bench-hostile demo demo-dashboard emulator stack bench bench-bulk bench-bulk-100k bench-dashboard lock clean

# The venv is (re)built whenever requirements.txt changes. uv resolves and installs the pinned set
# in seconds; it is itself installed from PyPI into the venv.
$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements.txt
	touch $@

install: $(INSTALLED)

# ruff (configured in pyproject.toml: line length 120, pycodestyle, pyflakes, import order) checks and
# formatting, before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

# The real process deaths alone: the process stack, SIGKILLed triggerer, worker and scheduler, the chaos run.
test-deaths: install
	$(PY) -m pytest -s tests/test_stack_deaths.py

# The manifest fuzzing with 10,000 examples per property (make test runs 150), and hostile input at 100 MB.
test-fuzz: install
	HEALTHIMAGING_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q -p no:cacheprovider tests/test_manifest_fuzz.py

bench-hostile: install
	$(PY) bench/hostile_manifest.py --megabytes 100

demo: install
	$(PY) scripts/demo.py

# The demo's Airflow served (airflow api-server on .demo/) to see its run in the HealthImaging dashboard.
demo-dashboard: install
	$(PY) scripts/demo.py --dashboard

# The emulator in the foreground with the sample data, on the default port 8089.
emulator: install
	$(PY) -m healthimaging_emulator --seed sample

# The distributed stack of docker-compose.yaml (CeleryExecutor, two workers, triggerer, api-server,
# scheduler, dag-processor, the emulator) as processes on this machine's PostgreSQL and Redis, until Ctrl-C.
# Configured from docker-compose.yaml and .env (else .env.example); `python -m stack --help` for options.
stack: install
	$(PY) -m stack up

# .env for docker compose (and `make stack`): .env.example with fresh secrets and your user id.
.env:
	$(PYTHON) -m stack dotenv

bench: install
	$(PY) bench/emulator_throughput.py

# The bulk-copy DAG at the service's limits on the process stack of docker-compose.yaml (PostgreSQL, Redis,
# two Celery workers, the triggerer), beside a plain boto3 loop and a naive mapped-task DAG, then
# 100,000-row manifest validation (about an hour by the points' ideals; bench/bulk_copy.py --help for one point).
bench-bulk: install
	$(PY) bench/bulk_copy.py

# 100,000 rows through the same stack with the emulator's limits raised (100/s, 500 copies in progress).
bench-bulk-100k: install
	$(PY) bench/bulk_copy.py --points 100k --baselines "" --validate-rows 0

# The dashboard's run view and failure view on a run of 100,000 rows in a ledger on PostgreSQL (about 1.5 minutes).
bench-dashboard: install
	$(PY) bench/dashboard_queries.py


# Recompile requirements.txt (the full pinned set) from requirements.in.
lock: install
	$(VENV)/bin/uv pip compile --quiet --no-header requirements.in -o requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache
