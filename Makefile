# Two commands on a fresh clone:  `make lab` opens the course, `make test` runs every test.
# Both create .venv on first use and install what is missing (CPU-only torch where there is no NVIDIA GPU).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.course-installed
PYTEST_ARGS ?=

.PHONY: lab test unit nb bench clean-venv check-e2e

$(STAMP): pyproject.toml tools/install_torch.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed; set PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python tools/install_torch.py
	$(BIN)/python -m pip install -q -e '.[lab,test,ref]'
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=300 $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

nb: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=300 $(NB)

# Where learners use the course (needs `make test` first: it compares with nbval's recorded outputs):
# JupyterLab in Debian's Chromium, ipywidgets 7.7.1 as on Colab, determinism, a simulated Colab first run.
# Prepares Chromium (apt-get) and a second environment $(E2E_VENV) on first use; see tests/e2e/ and tools/e2e/.
E2E_VENV ?= $(VENV)/e2e
check-e2e: $(STAMP)
	E2E_VENV=$(E2E_VENV) $(PYTHON) tools/e2e/setup_env.py
	COURSE_E2E=1 $(E2E_VENV)/bin/python -m pytest tests/test_widgets.py tests/e2e $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
