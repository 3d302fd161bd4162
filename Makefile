# Two commands on a fresh clone:  `make lab` opens the course, `make test` runs every test.
# Both create .venv on first use and install what is missing (CPU-only torch where there is no NVIDIA GPU).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.course-installed
PYTEST_ARGS ?=

.PHONY: lab test unit nb bench clean-venv check-e2e site check-site wheelhouse

# Classroom without a network: `make wheelhouse` gathers every wheel the course needs (CPU torch included) into
# $(WHEELHOUSE_OUT); copy that folder to the learners' machines (same OS, CPU type and Python version) and run
# `make lab WHEELHOUSE=folder` (or `make test WHEELHOUSE=folder`): pip then installs from the folder alone.
WHEELHOUSE_OUT ?= $(or $(WHEELHOUSE),build/wheelhouse)
ifneq ($(strip $(WHEELHOUSE)),)
ifeq ($(filter wheelhouse,$(MAKECMDGOALS)),)
export PIP_NO_INDEX := 1
export PIP_FIND_LINKS := $(abspath $(WHEELHOUSE))
endif
endif

$(STAMP): pyproject.toml tools/install_torch.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed; set PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python tools/install_torch.py
	$(BIN)/python -m pip install -q -e '.[lab,test,ref]'
	-$(BIN)/python tools/fetch_refs.py
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

test: $(STAMP)
	$(BIN)/python -m pytest -p tools.site.nbsave tests notebooks --nbval-lax --nbval-cell-timeout=300 $(PYTEST_ARGS)

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
	COURSE_E2E=1 $(E2E_VENV)/bin/python -m pytest tests/kit/test_widgets.py tests/e2e $(PYTEST_ARGS)

# The course website (Sphinx + myst-nb + sphinx-book-theme, all from PyPI; works offline): build/site/index.html.
# It uses the notebooks `make test` executed (artifacts/executed/, written by tools/site/nbsave.py) and executes
# the others once itself. SITE_ARGS=--no-execute fails instead (CI). A notebook that failed in `make test` (its
# executed copy or $COURSE_NB_REPORT says so) stops the build; one that fails when the build executes it is published
# without outputs, under a note saying it was not executed. Pages show what JupyterLab shows (see tools/site/nbsave.py).
# SITE_ARGS="--notebooks notebooks/02_moe_routing.ipynb --notebooks-only" previews one page quickly.
# `make check-site` checks the site in Chromium.
SITE_STAMP = $(VENV)/.site-installed
SITE_ARGS ?=
$(SITE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[lab,test,ref,site]'
	@touch $(SITE_STAMP)

site: $(SITE_STAMP)
	$(BIN)/python tools/site/build.py $(SITE_ARGS)

check-site: $(STAMP)
	E2E_VENV=$(E2E_VENV) $(PYTHON) tools/e2e/setup_env.py
	COURSE_E2E=1 COURSE_SITE_REQUIRED=1 $(E2E_VENV)/bin/python -m pytest tests/e2e/test_site.py $(PYTEST_ARGS)

wheelhouse: $(STAMP)
	mkdir -p $(WHEELHOUSE_OUT)
	pin=$$($(BIN)/python -c 'import sys; sys.path.insert(0, "tools"); import install_torch as t; print(t.CPU_PIN)'); \
	index=$$($(BIN)/python -c 'import sys; sys.path.insert(0, "tools"); import install_torch as t; print(t.CPU_INDEX)'); \
	$(BIN)/python -m pip download -q --no-deps -d $(WHEELHOUSE_OUT) "$$pin" \
	  || $(BIN)/python -m pip download -q --no-deps -d $(WHEELHOUSE_OUT) "$$pin" --index-url "$$index" || exit 1; \
	$(BIN)/python -m pip wheel -q --wheel-dir $(WHEELHOUSE_OUT) --find-links $(WHEELHOUSE_OUT) \
	  '.[lab,test,ref]' "$$pin" setuptools wheel pip || exit 1
	rm -f $(WHEELHOUSE_OUT)/inside_deepseek-*.whl
	@echo "wheelhouse: $$(ls $(WHEELHOUSE_OUT) | wc -l) files, $$(du -sh $(WHEELHOUSE_OUT) | cut -f1) in $(WHEELHOUSE_OUT)"

clean-venv:
	rm -rf $(VENV)
