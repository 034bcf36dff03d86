# Set-up and checks for groma_ros. See README.md, "Install".
#   make venv   create .venv and install the project (editable) with dev tools
#   make test   run the test suite in .venv
#   make demo   run the end-to-end demo in .venv

PYTHON ?= python3.11
VENV ?= .venv
VENV_PY := $(VENV)/bin/python

# Re-install only when something that shapes the install changed; the stamp
# makes `make venv` (and so `make test`) a no-op otherwise. Python sources need
# no re-install: the editable install serves them from the tree.
INSTALL_INPUTS := pyproject.toml package.xml CMakeLists.txt \
	$(wildcard cmake/*.cmake cmake/*.in cmake/pip_superbuild/CMakeLists.txt) \
	$(wildcard msg/*.msg srv/*.srv) \
	$(wildcard interfaces/vision_msgs/*.xml interfaces/vision_msgs/CMakeLists.txt interfaces/vision_msgs/msg/*.msg)
STAMP := $(VENV)/.groma_ros-installed

.PHONY: venv test demo

venv: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	@# A venv without pip is a half-created one (venv creation was interrupted):
	@# start it again rather than fail later in pip.
	@test -x $(VENV)/bin/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; }
	$(VENV_PY) -m pip install -e '.[dev]'
	@touch $@

test: venv
	$(VENV_PY) -m pytest tests/

demo: venv
	$(VENV_PY) -m groma_ros.demo
