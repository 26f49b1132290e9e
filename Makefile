# movierec: train -> archive -> serve -> operate. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
SERVE := $(VENV)/bin/movierec-serve
CLIENT := $(VENV)/bin/movierec

VERSION ?= 1.0
ARTIFACTS ?= artifacts/v$(VERSION)
TRAIN_ARGS ?=
MODEL_STORE ?= model_store
RUN_DIR ?= run
INFERENCE_PORT ?= 8080
MANAGEMENT_PORT ?= 8081
METRICS_PORT ?= 8082
GRPC_INFERENCE_PORT ?= 7070
GRPC_MANAGEMENT_PORT ?= 7071
MODELS ?= movierec=movierec-$(VERSION).mar
USER_ID ?= 196
MOVIE_ID ?= 242
TOP_K ?= 10
PYTEST_ARGS ?=
# make test: its time goes mostly to waiting on servers, so 3 workers keep 2 cores busy; each test
# file runs on one worker (--dist loadfile), so module fixtures (servers) start once.
TEST_WORKERS ?= 3
COLD_START ?=
BATCH_SIZE ?=

MAR := $(MODEL_STORE)/movierec-$(VERSION).mar
SERVE_PORTS := --inference-port $(INFERENCE_PORT) --management-port $(MANAGEMENT_PORT) \
	--metrics-port $(METRICS_PORT) --grpc-inference-port $(GRPC_INFERENCE_PORT) \
	--grpc-management-port $(GRPC_MANAGEMENT_PORT)
SERVER_FLAGS := --inference-url http://127.0.0.1:$(INFERENCE_PORT) \
	--management-url http://127.0.0.1:$(MANAGEMENT_PORT) --key-file $(RUN_DIR)/key_file.json

.PHONY: help install data datagen train mar serve reload stop status health predict recommend demo test test-fast lint install-bench bench soak bench-scale install-surprise bench-accuracy gpu-check kserve-layout clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: VERSION=$(VERSION) ARTIFACTS=$(ARTIFACTS) TRAIN_ARGS='...' RUN_DIR=$(RUN_DIR)"
	@echo "             MODELS=$(MODELS) FRESH=1 (make serve: load MODELS instead of the last snapshot)"
	@echo "             INFERENCE_PORT=$(INFERENCE_PORT) MANAGEMENT_PORT=$(MANAGEMENT_PORT) METRICS_PORT=$(METRICS_PORT)"

install: $(STAMP) ## create .venv with the pinned dependencies (requirements.txt) and the project (editable)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

DATASET ?= ml-100k

data: $(STAMP) ## download a dataset into the user cache: MovieLens 100K (recbole 1.2.1 wheel) [DATASET=ml-latest-small]
	$(PY) -c "from model.data import dataset; print(*dataset('$(DATASET)'), sep='\n')"

DATA_OUT ?= data/synthetic
DATAGEN_ARGS ?=

datagen: $(STAMP) ## MovieLens-25M-shaped synthetic ratings.csv/movies.csv, planted truth (planted.npz), known RMSE floor: [DATA_OUT=dir] [DATAGEN_ARGS='--n-ratings 1000000 --exposure-strength 0.5 ...']
	$(PY) -m movierec.datagen --out $(DATA_OUT) $(DATAGEN_ARGS)

train: $(STAMP) ## train and export an artifact: make train [ARTIFACTS=dir] [TRAIN_ARGS='--epochs 5 ...']
	$(PY) train.py --out $(ARTIFACTS) $(TRAIN_ARGS)

$(ARTIFACTS)/metadata.json:
	$(MAKE) train ARTIFACTS=$(ARTIFACTS) TRAIN_ARGS='$(TRAIN_ARGS)'

mar: $(STAMP) $(ARTIFACTS)/metadata.json ## build model_store/movierec-VERSION.mar from ARTIFACTS (trained first if missing, with TRAIN_ARGS) [COLD_START=fallback] [BATCH_SIZE=1]
	$(PY) -m movierec.torchserve.archive --artifacts $(ARTIFACTS) --version $(VERSION) --model-store $(MODEL_STORE) \
		$(if $(COLD_START),--cold-start $(COLD_START)) $(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE))

serve: $(STAMP) ## start TorchServe in the background and wait until ready (first start or FRESH=1: MODELS; later: every .mar in MODEL_STORE, last snapshot's defaults)
	$(SERVE) start --run-dir $(RUN_DIR) --model-store $(MODEL_STORE) --models $(MODELS) $(if $(FRESH),--fresh) $(SERVE_PORTS)

reload: $(STAMP) ## restart TorchServe on the same ports serving every .mar now in MODEL_STORE (add/remove versions; keeps the default)
	$(SERVE) reload --run-dir $(RUN_DIR)

stop: ## stop TorchServe (no process left behind)
	@if [ -x $(SERVE) ]; then $(SERVE) stop --run-dir $(RUN_DIR); fi

status: ## show whether TorchServe runs and which models it serves
	$(SERVE) status --run-dir $(RUN_DIR)

health: ## exit 0 if TorchServe answers /ping and every model has a READY worker (probe command)
	$(SERVE) health --run-dir $(RUN_DIR)

predict: ## sample rating request: make predict [USER_ID=196 MOVIE_ID=242]
	$(CLIENT) predict $(SERVER_FLAGS) --user $(USER_ID) --movie $(MOVIE_ID)

recommend: ## sample top-K request: make recommend [USER_ID=196 TOP_K=10]
	$(CLIENT) recommend $(SERVER_FLAGS) --user $(USER_ID) --top-k $(TOP_K)

demo: $(STAMP) ## the main job: train (or reuse ARTIFACTS), build the .mar, serve, answer requests
	$(MAKE) --no-print-directory mar
	$(MAKE) --no-print-directory stop
	$(MAKE) --no-print-directory serve
	$(MAKE) --no-print-directory health
	$(MAKE) --no-print-directory predict
	$(MAKE) --no-print-directory recommend
	@echo "TorchServe is running (inference http://127.0.0.1:$(INFERENCE_PORT)); 'make stop' stops it."

test: $(BENCH_STAMP) ## all tests, including real-TorchServe integration tests and the benchmark peer, on TEST_WORKERS pytest-xdist workers
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP) ## unit tests only: no Java, no server (under a minute on 2 cores)
	$(PY) -m pytest -q -m "not integration and not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install-bench: $(BENCH_STAMP) ## benchmark-only dependencies (requirements-bench.txt: FastAPI + uvicorn for the peer)

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench: $(BENCH_STAMP) ## in-process vs served vs a FastAPI peer; rewrites its sections of BENCHMARKS.md (keeps Scale, Soak, Accuracy)
	$(VENV)/bin/movierec-bench --artifacts $(ARTIFACTS) --report BENCHMARKS.md

MINUTES ?= 20
SOAK_ARGS ?=

soak: $(STAMP) $(ARTIFACTS)/metadata.json ## mixed traffic at c16 for MINUTES (20) on a fresh server, RSS every 30 s; writes the Soak section of BENCHMARKS.md [SOAK_ARGS='--run-dir run']
	$(PY) -m movierec.bench.soak --artifacts $(ARTIFACTS) --duration $(MINUTES)m --report BENCHMARKS.md $(SOAK_ARGS)

bench-scale: $(STAMP) ## generate -> load -> train -> .mar -> score -> serve at several sizes [SIZES='1000000 5000000'] [SCALE_ARGS='...']
	$(PY) -m movierec.bench.scale --sizes $(or $(SIZES),1000000 5000000 25000095) --out bench_scale --serve $(SCALE_ARGS)

SURPRISE_VENV ?= .venv-surprise
SURPRISE_STAMP := $(SURPRISE_VENV)/.installed
ACCURACY_ARGS ?=

install-surprise: $(SURPRISE_STAMP) ## Surprise SVD/SVD++ for bench-accuracy in .venv-surprise (requirements-surprise.txt; builds from source, numpy<2)

$(SURPRISE_STAMP): requirements-surprise.txt
	$(PYTHON) -m venv $(SURPRISE_VENV)
	$(SURPRISE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SURPRISE_VENV)/bin/python -m pip install -q -r requirements-surprise.txt
	touch $@

bench-accuracy: $(STAMP) $(SURPRISE_STAMP) ## RMSE, recall@10, NDCG@10 of movierec vs mean/popular/EASE^R/SVD on ml-100k and ml-latest-small; writes the Accuracy section [ACCURACY_ARGS='--quick ...']
	$(PY) -m movierec.bench.accuracy --work-dir bench_accuracy --report BENCHMARKS.md $(ACCURACY_ARGS)

gpu-check: $(STAMP) ## on a CUDA machine: train on the GPU, compare the GPU handler with the CPU one
	$(PY) -m movierec.bench.gpu_check --device $(or $(DEVICE),cuda) --out gpu_out

KSERVE_LAYOUT ?= deploy/kserve/layout/v$(VERSION)

kserve-layout: $(STAMP) ## stage deploy/kserve/layout/vVERSION (config/ + model-store/) for KServe
	@test -f $(MAR) || { echo "no $(MAR): run 'make mar VERSION=$(VERSION)'" >&2; exit 2; }
	$(PY) deploy/kserve/stage.py --mar $(MAR) --out $(KSERVE_LAYOUT)

clean: stop ## remove build outputs, archives, run state (keeps .venv and the data cache)
	rm -rf build $(MODEL_STORE) $(RUN_DIR) artifacts deploy/kserve/layout gpu_out
