# `make serve` serves the shipped model on http://127.0.0.1:8000; `make test` runs the tests.
# Both create .venv and install what is missing first, so either works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev serve test lint format bench docker-test browser lock

# Installs come from the lock files only: every package, transitive ones included, pinned with its hashes.
$(VENV)/.installed: requirements.lock requirements-nodeps.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-nodeps.lock
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev browser

# the browser test drives the system's Chromium; install it where apt is available and it is missing
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium is not installed: the browser test will be skipped"; }

# app.serve: uvicorn with the HTTP server's limits (header size and time, keep-alive, connections)
serve: install
	UVICORN_HOST=$(HOST) UVICORN_PORT=$(PORT) $(PY) -m app.serve

test: install-dev
	$(PY) -m pytest -q

# the house style, checked by CI beside the tests (settings in pyproject.toml); `make format` applies it
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) -m bench.run_all

docker-test:
	bash docker/test.sh

# Rewrites the lock files from the requirements*.txt pins (needs PyPI); commit the result.
UV := $(VENV)-tools/bin/uv
LOCK := $(UV) pip compile --quiet --no-config --python-version 3.11 --generate-hashes --annotation-style line
lock:
	test -x $(UV) || { $(PYTHON) -m venv $(VENV)-tools && $(VENV)-tools/bin/pip install --quiet uv==0.13.8; }
	$(LOCK) -o requirements.lock requirements.txt
	$(LOCK) -o requirements-dev.lock requirements.txt requirements-dev.txt
	$(LOCK) --no-deps -o requirements-nodeps.lock requirements-nodeps.txt
