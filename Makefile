# Everything installs into .venv; the system Python is left alone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# Starts Kairos on the embedded default and prints a demo account with a working curl.
run: $(STAMP)
	$(VENV)/bin/kairos up --demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: $(STAMP)
	$(PY) bench/ingest_bench.py
	$(PY) bench/identity_bench.py
	$(PY) bench/analytics_bench.py
	$(PY) bench/journey_bench.py
	$(PY) bench/delivery_bench.py
	$(PY) bench/campaign_bench.py

clean:
	rm -rf $(VENV) .kairos
