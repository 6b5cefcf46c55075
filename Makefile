# videoexperts -- `make help` lists the targets. Every target that needs Python first creates
# .venv and installs the project into it (once; again only when pyproject.toml changes).

PYTHON        ?= python3
VENV          ?= .venv
PY            := $(VENV)/bin/python
# torch and torchvision are installed first and pinned: the CUDA build runs on CPU-only machines too.
TORCH_SPEC    ?= torch==2.14.1 torchvision==0.29.1
# facenet-pytorch pins torch<2.3 in its metadata although it runs on current torch: no-deps install.
FACENET_SPEC  ?= facenet-pytorch==2.6.0
STAMP         := $(VENV)/.installed

# the roots the Python commands take by default ($VIDEOEXPERTS_DATA_ROOT / _FEATURES_ROOT), else data, features
DATA_ROOT     ?= $(or $(VIDEOEXPERTS_DATA_ROOT),data)
FEATURES_ROOT ?= $(or $(VIDEOEXPERTS_FEATURES_ROOT),features)
DATASET       ?= demo
EXPERT        ?= all
# SHARD / NUM_SHARDS default to the SLURM array task (python -m extract reads the environment)
SHARD         ?=
NUM_SHARDS    ?=
EXTRACT_ARGS  ?=
MODEL         ?= ce
SPLIT         ?=
SEEDS         ?= 0
TRAIN_ARGS    ?=
# GPUS=N trains with N processes on this machine (torchrun: DistributedDataParallel, one per GPU)
GPUS          ?=
VIDEOS        ?= 120
SEED          ?= 0
PAPER         ?= ce
RELEASE       ?=
# a pretraining run (make pretrain) that make reproduce fine-tunes from
PRETRAINED    ?=
SCHEDULER     ?= local
WORKERS       ?= 2
# the run and index that `make index` / `make serve` use: the demo's CE by default
RUN           ?= runs/demo/ce/seed0
# INDEX=PATH: where make index writes and make serve reads; by default train.index's own folder for
# DATASET in RUN/index/ (python picks it: the name of the dataset's stores, folder-NAME-HASH for folder:PATH)
INDEX         ?=
empty         :=
space         := $(empty) $(empty)
PORT          ?= 8000

# a value as one shell word, whatever spaces or quotes it holds: `make extract DATASET="folder:/my videos"`
# (a leading ~/ is the home folder, as the shell would have read it unquoted)
q              = '$(subst ','\'',$(if $(filter ~/%,$(firstword $(1))),$(HOME)$(subst $(space)~/,/,$(space)$(1)),$(1)))'
# a path as one make target or prerequisite name (make splits names at spaces; `\ ` keeps one)
target         = $(subst $(space),\$(space),$(1))

.DEFAULT_GOAL := help
.PHONY: help setup browser test test-fast demo demo-pretrain demo-data extract extract-cluster experts train pretrain caption probe reproduce import index serve check datasets bench-kit clean clean-venv

help: ## list the targets
	@echo 'videoexperts: text-to-video retrieval with multi-modal experts'
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo 'Variables: DATA_ROOT='$(call q,$(DATA_ROOT))' FEATURES_ROOT='$(call q,$(FEATURES_ROOT))' DATASET='$(call q,$(DATASET))' PYTHON='$(call q,$(PYTHON))

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "videoexperts needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(FACENET_SPEC)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || $(MAKE) --no-print-directory browser
	touch $(STAMP)

# Debian's chromium and its driver, for the search page's browser test (as root, else through sudo);
# where neither works the test is skipped, and this says so
SUDO          := $(if $(filter 0,$(shell id -u)),,sudo)
browser: ## install chromium + chromium-driver (Debian packages) for the browser test
	@if command -v apt-get >/dev/null && { [ -z '$(SUDO)' ] || command -v sudo >/dev/null; }; then \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo 'warning: chromium could not be installed: the browser test will be skipped'; \
	else echo 'warning: no apt-get or sudo here: install chromium and chromium-driver; the browser test skips without them'; fi

setup: $(STAMP) ## create .venv and install the project (done automatically by the other targets)

test: $(STAMP) ## run the whole test suite (what CI runs)
	$(PY) -m pytest

test-fast: $(STAMP) ## run the tests not marked slow
	$(PY) -m pytest -m 'not slow'

demo: $(STAMP) ## run the main job on the embedded demo data
	$(PY) -m pipelines.demo --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT)) --videos $(VIDEOS) --seed $(SEED) \
		--runs runs/demo --report reports/demo
	@touch $(call q,$(FEATURES_ROOT)/demo/.extracted)  # its stores are those make train needs: not extracted again

demo-pretrain: $(STAMP) ## pretrain MMT and the support-set model on a narrated demo set, fine-tune on the demo
	$(PY) -m pipelines.demo_pretrain --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT)) --seed $(SEED) \
		--runs runs/demo_pretrain --report reports/demo_pretrain

demo-data: $(STAMP) ## generate only the demo datasets (DATA_ROOT/demo, and the stills of DATA_ROOT/demo_images)
	$(PY) -m shared.datasets.demo --out $(call q,$(DATA_ROOT)/demo) --videos $(VIDEOS) --seed $(SEED)
	$(PY) -m shared.datasets.demo --images --out $(call q,$(DATA_ROOT)/demo_images) --seed $(SEED)

# the demo's videos are generated on first use
DEMO_DATA     := $(call target,$(DATA_ROOT))/demo/demo.json
$(DEMO_DATA): | $(STAMP)
	$(PY) -m shared.datasets.demo --out $(call q,$(DATA_ROOT)/demo) --videos $(VIDEOS) --seed $(SEED)
DEMO_IMAGES   := $(call target,$(DATA_ROOT))/demo_images/demo_images.json
$(DEMO_IMAGES): | $(STAMP)
	$(PY) -m shared.datasets.demo --images --out $(call q,$(DATA_ROOT)/demo_images) --seed $(SEED)
#: the generated file that DATASET needs first, if any
DEMO_FILE     := $(if $(filter demo,$(DATASET)),$(DEMO_DATA))$(if $(filter demo_images,$(DATASET)),$(DEMO_IMAGES))

extract: $(STAMP) $(DEMO_FILE) ## extract EXPERT (one, a comma list, or all) for DATASET [SHARD= NUM_SHARDS= EXTRACT_ARGS=]
	$(PY) -m extract --dataset $(call q,$(DATASET)) --expert $(EXPERT) --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT)) \
		$(if $(SHARD),--shard $(SHARD)) $(if $(NUM_SHARDS),--num-shards $(NUM_SHARDS)) $(EXTRACT_ARGS)

extract-cluster: $(STAMP) $(DEMO_FILE) ## extract on Dask: SCHEDULER=local|slurm|ADDRESS WORKERS=N [EXTRACT_ARGS=]
	$(PY) -m pipelines.extract_cluster --dataset $(call q,$(DATASET)) --experts $(EXPERT) --scheduler $(SCHEDULER) \
		--workers $(WORKERS) --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT)) $(EXTRACT_ARGS)

import: $(STAMP) ## import the authors' features: PAPER=ce|mmt RELEASE=PATH DATASET=...
	$(if $(RELEASE),,$(error make import needs RELEASE=PATH, the unpacked release of the authors' features (README, "Reproducing the papers")))
	$(PY) -m pipelines.import_features --source $(PAPER) --root $(call q,$(RELEASE)) --dataset $(call q,$(DATASET)) \
		--data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT))

reproduce: $(STAMP) ## PAPER=ce|mee|mmt|ssb DATASET= SPLIT= [RELEASE=PATH PRETRAINED=RUN VARIANT=coco_face]: 3 seeds beside the paper's numbers
	$(PY) -m pipelines.reproduce --paper $(PAPER) --dataset $(call q,$(DATASET)) $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(RELEASE),--release $(call q,$(RELEASE))) $(if $(PRETRAINED),--pretrained $(call q,$(PRETRAINED))) \
		$(if $(VARIANT),--variant $(VARIANT)) \
		--data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT))

# the demo's stores: every expert, random weights where the weights do not ship in a wheel
DEMO_STORES   := $(call target,$(FEATURES_ROOT))/demo/.extracted
$(DEMO_STORES): $(DEMO_DATA)
	$(PY) -m extract --dataset demo --expert all --weights random --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT))
	touch $(call q,$@)

# python -m train, under torchrun (train.launch: a failure ends in one line) with GPUS=N processes
TRAIN         = $(PY) $(if $(GPUS),-m train.launch --standalone --nproc-per-node $(GPUS)) -m train

train: $(STAMP) $(if $(filter demo,$(DATASET)),$(DEMO_STORES)) ## train MODEL (mee, ce, mmt, ssb) on DATASET [SPLIT= SEEDS=0,1,2 GPUS=N TRAIN_ARGS=]; the demo by default
	$(TRAIN) --model $(MODEL) --dataset $(call q,$(DATASET)) $(if $(SPLIT),--split $(SPLIT)) --seeds $(SEEDS) \
		--data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT)) $(TRAIN_ARGS)

pretrain: $(STAMP) ## PAPER=mmt|ssb [GPUS=N TRAIN_ARGS=]: pretrain on HowTo100M (configs PAPER_howto100m.yaml) into runs/PAPER-howto100m-pretrain
	$(TRAIN) --model $(PAPER) --dataset howto100m --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT)) $(TRAIN_ARGS)

index: $(STAMP) ## embed every video of DATASET with RUN's model, thumbnails, search index [SHARD= NUM_SHARDS= OVERWRITE=1]
	$(PY) -m train.index --run $(call q,$(RUN)) --dataset $(call q,$(DATASET)) $(if $(INDEX),--out $(call q,$(INDEX))) --data-root $(call q,$(DATA_ROOT)) \
		--features-root $(call q,$(FEATURES_ROOT)) $(if $(SHARD),--shard $(SHARD)) $(if $(NUM_SHARDS),--num-shards $(NUM_SHARDS)) \
		$(if $(OVERWRITE),--overwrite)

serve: $(STAMP) ## search INDEX in the browser (http://127.0.0.1:PORT/): make index first
	$(PY) -m pipelines.serve --run $(call q,$(RUN)) $(if $(INDEX),--index $(call q,$(INDEX)),--dataset $(call q,$(DATASET))) --data-root $(call q,$(DATA_ROOT)) --port $(PORT)

# caption and probe take a support-set run: RUN when given, else the demo's
SSB_RUN       = $(if $(filter command line environment,$(origin RUN)),$(RUN),runs/demo/ssb)
BEAM          ?= 1
caption: $(STAMP) ## caption DATASET's test videos with a support-set run: RUN=runs/... [SPLIT= BEAM=N]; BLEU, METEOR, ROUGE-L, CIDEr
	$(PY) -m train.caption --run $(call q,$(SSB_RUN)) $(if $(filter-out demo,$(DATASET)),--dataset $(call q,$(DATASET))) $(if $(SPLIT),--split $(SPLIT)) \
		--beam $(BEAM) --data-root $(call q,$(DATA_ROOT)) --features-root $(call q,$(FEATURES_ROOT))

POOLING       ?= head
probe: $(STAMP) ## linear action-recognition probe of a run: RUN=runs/... DATASET=hmdb51|ucf101 [POOLING=head|mean]
	$(PY) -m train.probe --run $(call q,$(SSB_RUN)) --dataset $(call q,$(DATASET)) --pooling $(POOLING) --data-root $(call q,$(DATA_ROOT)) \
		--features-root $(call q,$(FEATURES_ROOT))

experts: $(STAMP) ## list the experts, their models, sampling and weights
	$(PY) -m extract --list

datasets: $(STAMP) ## describe DATASET's manifest: splits, captions, video files found
	$(PY) -m shared.datasets $(call q,$(DATASET)) --data-root $(call q,$(DATA_ROOT))

check: $(STAMP) ## validate every store of DATASET under FEATURES_ROOT
	$(PY) -m shared.store check --dataset $(call q,$(DATASET)) --features-root $(call q,$(FEATURES_ROOT))

# the GPU benchmarks on a machine without package access (BENCHMARKS.md): build the kit here, carry
# it there with the repository, and run `bash pipelines/bench_gpu.sh extract|train|tests|all` there
bench-kit: $(STAMP) ## build .whl: the wheels, FFmpeg and 15-s clips that pipelines/bench_gpu.sh needs offline
	$(PY) -m pipelines.bench_kit --out .whl

clean: ## remove caches (keeps .venv, data and features)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-venv: ## remove .venv (the next target reinstalls it)
	rm -rf $(VENV)
