# The two commands of the README: `make demo` (main job on both built-in test beds) and
# `make test` (the test suite). Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN := PYTHONPATH=. $(PY)

.PHONY: demo test testbed planted benchmark assets

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

# Both built-in models, each with its Table 1 and grids (demo_output/natural, demo_output/planted;
# time in BENCHMARKS.md, "The demo"): the natural test bed, then the planted one with its
# criteria and localization table, at SD v1.4's tau_mem 0.428 (the planted bed's own, 0.158,
# lies below what NeMo's first-step test reaches on it: BENCHMARKS.md, "The planted test bed").
demo: $(VENV)/installed
	$(RUN) -m testbed.table1
	$(RUN) -m testbed.table1 --bed planted --memorization_threshold 0.428

test: $(VENV)/installed
	$(RUN) -m pytest -q

# Retrain the built-in test bed from scratch (about 45 min on 2 CPU cores).
testbed: $(VENV)/installed
	$(RUN) -m testbed.train_testbed --output testbed

# The planted test bed: the test bed fine-tuned so that 8 prompts replicate through known
# neurons (testbed/planted/ground_truth.json), then its statistics (script 1) and tau_mem (script 2).
PLANTED := testbed/planted
planted: $(VENV)/installed
	$(RUN) -m testbed.train_planted --output $(PLANTED) --threads 1  # about 13 min on the shared cores
	$(RUN) 1_compute_activations_statistics.py -v $(PLANTED)/model --prompts $(PLANTED)/prompts/additional_prompts.csv --output $(PLANTED)/statistics.pt --overwrite
	$(RUN) 2_compute_pairwise_ssim.py -v $(PLANTED)/model --prompts $(PLANTED)/prompts/unmemorized_prompts.csv --output $(PLANTED)/scores_unmemorized.csv --ssim_kernel_size 5 --overwrite
	mv $(PLANTED)/scores_unmemorized.csv.threshold.json $(PLANTED)/threshold.json && rm $(PLANTED)/scores_unmemorized.csv*
	rm $(PLANTED)/statistics.pt.settings.json

benchmark: $(VENV)/installed
	$(RUN) -m benchmarks.localization

# Fetch and verify what the README's SD v1.4 commands read (prompts/, statistics/, weights/,
# original_images/); `make assets ASSETS="sscd_disc_large"` picks others (0_fetch_assets.py --list).
ASSETS ?= sd14
assets: $(VENV)/installed
	$(RUN) 0_fetch_assets.py $(ASSETS)
