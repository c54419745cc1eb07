# `make run` and `make test` are the whole set-up: they create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bots chat

lint: $(STAMP)
	$(BIN)/ruff check bots tests
	$(BIN)/ruff format --check bots tests
	$(BIN)/mypy

# Browser tests use Debian's chromium + chromedriver; installed here when we may (root + apt).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
			|| echo "could not install chromium: browser tests will be skipped"; \
		else echo "chromium not installed and no root/apt: browser tests will be skipped"; fi; \
	fi

test: $(STAMP) browser lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/bots bench

clean:
	rm -rf $(VENV) .bots .pytest_cache .mypy_cache .ruff_cache
