# camserve: `make demo` sets everything up and runs the demo; `make test` sets up and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
SERVER_URL  ?= http://127.0.0.1:8080
MGMT_URL    ?= http://127.0.0.1:8081
APP_PORT    ?= 7860
PYTEST_ARGS ?=
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: help install java browser model archive serve stop app demo test test-fast lint bench bench-gpu soak analyze analyze-thyroid evaluate-cam clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "} \
	  {name[NR]=$$1; text[NR]=$$2; if (length($$1) > w) w = length($$1)} \
	  END{fmt = "  \033[1m%-" w "s\033[0m  %s\n"; for (i = 1; i <= NR; i++) printf fmt, name[i], text[i]}'

install: $(STAMP) java ## Virtualenv in .venv with every dependency (idempotent)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt   # torch/torchvision come from the machine's local wheels
	$(PY) -m pip install -q --no-deps -e .
	touch $@

java: ## Check that Java >= 11 (TorchServe's frontend) is installed
	@v=$$(java -version 2>&1 | awk -F'"' '/version/{split($$2,a,"."); print (a[1]=="1")?a[2]:a[1]}'); \
	if [ -z "$$v" ] || [ "$$v" -lt 11 ]; then \
	  echo "TorchServe needs Java >= 11 (found: $${v:-none}). Install it, e.g. 'apt-get install openjdk-17-jdk-headless'."; exit 1; fi

browser: ## Debian's headless Chromium for the real-browser tests
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Install Debian's chromium package (sudo apt-get install chromium)"; exit 1; fi; }

.PHONY: nginx deploy-tools deploy-check
DEPLOY_VENV := build/deploy-venv

nginx: ## Debian's nginx and its stream module, for the deployment rehearsal (deploy/rehearsal.py)
	@{ command -v nginx >/dev/null || test -x /usr/sbin/nginx; } && test -e /usr/lib/nginx/modules/ngx_stream_module.so || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream >/dev/null; \
	  else echo "Install Debian's nginx and libnginx-mod-stream (sudo apt-get install nginx libnginx-mod-stream)"; exit 1; fi; }

$(DEPLOY_VENV)/.installed: requirements-deploy.txt
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/pip install -q -r requirements-deploy.txt
	touch $@

deploy-tools: $(DEPLOY_VENV)/.installed ## Static checkers of deploy/ (hadolint, kubernetes-validate, checkov, yamllint)

deploy-check: install nginx deploy-tools ## Deployment checks: Dockerfile, manifests, policies, and the two-pod rehearsal on loopback
	$(PY) -m pytest -q tests/test_deploy_static.py tests/test_deploy_rehearsal.py $(PYTEST_ARGS)

model: install ## Generate, train and archive both demo models (cached): chest_phantom and thyroid_phantom
	$(PY) scripts/demo/build.py

archive: install ## Package a checkpoint: make archive CKPT=path NAME=name [ARGS="--arch resnet18 --classes a,b"]
	@test -n "$(CKPT)" -a -n "$(NAME)" || { echo "usage: make archive CKPT=checkpoint.pt NAME=model_name [ARGS=...]"; exit 2; }
	$(PY) scripts/archive.py $(CKPT) --name $(NAME) $(ARGS)

serve: install ## Start TorchServe in the background (every .mar in model_store/; its logs go to logs/)
	@ls model_store/*.mar >/dev/null 2>&1 || { echo "model_store/ has no .mar: run 'make model' or 'make archive'"; exit 1; }
	@mkdir -p logs
	@# The server inherits these file descriptors: its log lines go to logs/, never to this terminal.
	@LOG_LOCATION=logs METRICS_LOCATION=logs $(VENV)/bin/torchserve --start --ncs --ts-config config.properties \
	  --model-store model_store >logs/torchserve.out 2>&1 </dev/null
	@$(PY) scripts/wait_ready.py --url $(SERVER_URL) --management-url $(MGMT_URL) --key-file key_file.json \
	  || { tail -n 20 logs/torchserve.out; exit 1; }
	@echo "TorchServe is up on $(SERVER_URL) (key in key_file.json, logs in logs/; 'make stop' stops it)"

stop: ## Stop TorchServe
	-@$(VENV)/bin/torchserve --stop

app: install ## Run the Gradio app against the running TorchServe
	$(PY) -m gradio_app --url $(SERVER_URL) --management-url $(MGMT_URL) --token-file key_file.json --port $(APP_PORT)

demo: model ## Everything: install, model, TorchServe, Gradio app (Ctrl-C stops all of it)
	$(MAKE) serve
	trap '$(MAKE) --no-print-directory stop' EXIT INT TERM; \
	$(PY) -m gradio_app --url $(SERVER_URL) --management-url $(MGMT_URL) --token-file key_file.json --port $(APP_PORT)

test: install browser nginx deploy-tools ## Run the whole test suite (real TorchServes on free ports, real Chromium, nginx)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install ## The unit layer only: no TorchServe, no browser, no training (under a minute)
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

lint: install ## ruff on everything, strict mypy on the core and the handler
	$(VENV)/bin/ruff check camserve handlers scripts gradio_app tests deploy
	$(VENV)/bin/mypy

bench: install ## Cost of explaining, side by side: CAM passes, whole requests in process, served vs a minimal handler
	$(PY) scripts/bench_cam.py
	$(PY) scripts/bench.py
	$(PY) scripts/bench_served.py

soak: install ## Soak test of the built demo models: 1000 mixed requests, a worker killed mid-burst, an analysis through a crash
	$(PY) scripts/soak.py $(ARGS)

bench-gpu: install ## On a GPU machine: served resnet50 at 224 px, camserve vs a minimal handler, concurrency 64
	$(PY) scripts/bench_served.py --models resnet50 --concurrency 1,64 --batch-size 32 --requests 256

analyze: install ## Error analysis of the phantom test split through the served chest_phantom (after make serve)
	$(PY) scripts/analyze_errors.py --url $(SERVER_URL) --token-file key_file.json --visualize --gradcam --top-k 20 $(ARGS)

evaluate-cam: install ## Localisation of chest_phantom's maps on fresh phantoms (another seed), through the endpoint, against the bars (after make serve)
	$(PY) scripts/demo/build.py eval
	$(PY) scripts/evaluate_cam.py --data-dir data/phantoms_eval/test --model chest_phantom \
	  --roi-masks data/phantoms_eval/masks/lungs/test --lesion-masks data/phantoms_eval/masks/lesions/test \
	  --url $(SERVER_URL) --token-file key_file.json --bars scripts/demo/bars/default.json --check $(ARGS)

analyze-thyroid: install ## Error analysis of the thyroid test split with its clinical fields (after make serve)
	$(PY) scripts/analyze_errors.py --url $(SERVER_URL) --token-file key_file.json --model thyroid_phantom \
	  --data-dir data/thyroid/test --tabular data/thyroid/clinical.csv --tabular-root data/thyroid \
	  --output-dir outputs/error_analysis_thyroid --visualize --gradcam --top-k 20 $(ARGS)

clean: ## Remove build outputs (keeps .venv and data/)
	rm -rf logs outputs model_store/*.mar .pytest_cache
