# make demo : set up .venv, build the bundled demo dataset, train, evaluate, export, infer
# make test : set up .venv and run the fast tests (the daily loop); make test-all: every test, as CI runs them
# make bench: benchmarks (tables on stdout, JSON in bench/results/); make bench-gpu: the GPU figures
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := runs/demo

.PHONY: demo test test-all test-gpu bench bench-gpu venv clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q tests

test-gpu: venv
	$(PY) -m pytest -q -m gpu -rs tests

# The 720-pair evaluation runs before the 80-pair one: on ext4 without a journal, files created
# soon after thousands were deleted (a benchmark's cleanup) cost up to a millisecond each.
bench: venv
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) bench/deployed_eval.py
	$(PY) bench/deployed_eval.py --image-size 224 --out bench/results/deployed_eval_224.json
	$(PY) bench/train_throughput.py
	$(PY) bench/train_throughput.py --amp --out bench/results/train_throughput_amp.json
	$(PY) bench/eval_throughput.py --pairs-per-image 9 --out bench/results/eval_throughput_9.json
	$(PY) bench/eval_throughput.py
	$(PY) bench/inference.py
	$(PY) bench/identify_search.py
	$(PY) bench/int8.py
	$(PY) bench/memory.py

bench-gpu: venv
	$(PY) -m pip install --quiet -r requirements-bench.txt
	PY=$(PY) bash bench/gpu.sh

demo: venv
	$(PY) demo.py --out $(DEMO)

clean:
	rm -rf $(VENV) runs demo_data
