# `make serve` serves the shipped model on http://127.0.0.1:8000; `make test` runs the tests.
# Both create .venv and install what is missing first, so either works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev serve test bench docker-test browser

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev browser

# the browser test drives the system's Chromium; install it where apt is available and it is missing
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium is not installed: the browser test will be skipped"; }

serve: install
	$(VENV)/bin/uvicorn app.main:app --host $(HOST) --port $(PORT)

test: install-dev
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench.run_all

docker-test:
	bash docker/test.sh
