# Everything a fresh clone needs: `make demo` and `make test` install what they use themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install test demo emulator bench bench-bulk lock clean

# The venv is (re)built whenever requirements.txt changes. uv resolves and installs the pinned set
# in seconds; it is itself installed from PyPI into the venv.
$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements.txt
	touch $@

install: $(INSTALLED)

test: install
	$(PY) -m pytest

demo: install
	$(PY) scripts/demo.py

# The emulator in the foreground with the sample data, on the default port 8089.
emulator: install
	$(PY) -m healthimaging_emulator --seed sample

bench: install
	$(PY) bench/emulator_throughput.py

# The bulk-copy DAG on 1,000 image sets at 5 copies/s (about 4 minutes), and 100,000-row validation.
bench-bulk: install
	$(PY) bench/bulk_copy.py

# Recompile requirements.txt (the full pinned set) from requirements.in.
lock: install
	$(VENV)/bin/uv pip compile --quiet --no-header requirements.in -o requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache
