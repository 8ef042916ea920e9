# The README's commands. Every target creates/refreshes .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch first, pinned: any other torch request pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: venv demo test lint openapi bench up clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[all]" $(TORCH)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m ftjobs.launch.cli demo

test: venv
	$(PY) -m pytest -q -n 2 --durations=25

# mypy resolves `ftjobs.*` through a tree of links to the rooms (the package-dir mapping is setuptools', not mypy's).
ROOMS := client core service jobs launch
lint: venv
	$(VENV)/bin/ruff check ftjobs $(ROOMS) tests bench
	rm -rf build/typecheck && mkdir -p build/typecheck/ftjobs
	cp ftjobs/__init__.py build/typecheck/ftjobs/
	for room in $(ROOMS); do ln -s ../../../$$room build/typecheck/ftjobs/$$room; done
	cd build/typecheck && ../../$(VENV)/bin/mypy -p ftjobs.client -p ftjobs.core -p ftjobs.service -p ftjobs.launch

openapi: venv
	$(PY) -m ftjobs.service.openapi

bench: venv
	$(PY) bench/job_overhead.py

up: venv
	$(PY) -m ftjobs.launch.cli up

clean:
	rm -rf $(VENV) .ftjobs .pytest_cache build
