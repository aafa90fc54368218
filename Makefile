# The two commands of the README. Both install everything first.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
# pytest-xdist workers for `make test` (each gets its share of the cores); `make test PARALLEL=` runs one process.
PARALLEL ?= -n auto --maxprocesses 4 --maxschedchunk 1

.PHONY: install run test test-all

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"

run: install  ## the main job on its embedded default (untrained ViT-B/32, chelsea)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PYTHON) -m repinv $(ARGS)

test: install  ## the linter, then the test suite (what .ci/run runs)
	$(PYTHON) -m ruff check .
	WANDB_MODE=offline $(PYTHON) -m pytest -q $(PARALLEL) $(PYTEST_ARGS)
