# Everything a fresh machine needs: `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench starter-weights starter-members

# FER2013 in image-folder form (train/ and val/ with one folder per class).
FER2013 ?= ../shared/data/fer2013

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# setuptools' note that every editable install of a flat layout prints is a UserWarning
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfer predict examples/single_face_smile.mp4 --window 1 --stride 0.5

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Rebuilds weights/logo_former_fer2013.safetensors as its model card says, from scratch: five
# networks on grey 48 px FER2013 faces, each trained once on the FER+ crowd's vote shares
# (soft cross-entropy), with the same 10 % of train/ held out: a LOGO-Former (width-32
# ResNet-18 trunk with a stride-1 stem to layer3, 6x6 tokens, 2 blocks, 2x2x2 windows; AdamW,
# 30 epochs) and four plain width-32 ResNet-18s (SGD, 40 epochs, seeds 2 to 5). Their
# probabilities are averaged (dfer weights ensemble); a temperature is fitted on the held-out
# images (dfer weights calibrate) and the 16-frame export is scored once on val against the
# FER+ votes. `make -j2 starter-weights` trains two members at a time, one thread each; a
# killed run resumes where it stopped when run again.
VOTES := $(FER2013)/ferplus/train.csv
TRAIN_THREADS ?= 1
CROWD := --data-root $(FER2013) --votes $(VOTES) --frames 1 --grayscale --template fer2013 \
  --input-size 48 --detail-size 48 --holdout 0.1 --holdout-seed 0 --loss ce --batch-size 128 \
  --precision bf16 --threads $(TRAIN_THREADS) --log-every 50
LOGO := --model logo_former --model-opt stem=s1 --model-opt trunk_width=32 --model-opt dim=256 \
  --model-opt depth=2 --model-opt heads=4 --model-opt window=2,2,2 --optimizer adamw --lr 1e-3 \
  --weight-decay 0.05 --warmup-epochs 1 --clip-grad 5 --epochs 30 --seed 1
CNN := --model trunk_pool --model-opt stem=s1 --model-opt trunk_layers=4 --model-opt trunk_width=32 \
  --model-opt dim=512 --optimizer sgd --nesterov --momentum 0.9 --lr 0.1 --weight-decay 5e-4 \
  --warmup-epochs 2 --epochs 40

runs/crowd_logo/done: $(STAMP)
	$(BIN)/dfer train $(CROWD) $(LOGO) --output runs/crowd_logo $(if $(wildcard runs/crowd_logo/state.pt),--resume)
	touch $@

runs/crowd_cnn/done: $(STAMP)
	$(BIN)/dfer train $(CROWD) $(CNN) --seed 2 --output runs/crowd_cnn $(if $(wildcard runs/crowd_cnn/state.pt),--resume)
	touch $@

runs/crowd_cnn%/done: $(STAMP)
	$(BIN)/dfer train $(CROWD) $(CNN) --seed $$(( $* + 1 )) --output runs/crowd_cnn$* \
	  $(if $(wildcard runs/crowd_cnn$*/state.pt),--resume)
	touch $@

starter-members: runs/crowd_logo/done runs/crowd_cnn/done runs/crowd_cnn2/done runs/crowd_cnn3/done \
  runs/crowd_cnn4/done

CNN_RUNS := runs/crowd_cnn/last.safetensors runs/crowd_cnn2/last.safetensors runs/crowd_cnn3/last.safetensors \
  runs/crowd_cnn4/last.safetensors

starter-weights: starter-members
	$(BIN)/dfer weights ensemble runs/crowd_logo/last.safetensors $(CNN_RUNS) -o runs/crowd_ensemble.safetensors \
	  --float32
	$(BIN)/dfer weights calibrate runs/crowd_ensemble.safetensors runs/crowd_ensemble_cal.safetensors \
	  --data-root $(FER2013) \
	  --votes $(VOTES) --holdout 0.1 --holdout-seed 0 --float32 --threads 2
	# the members, the ensemble and the calibrated ensemble on the held-out images, kept with the run
	$(BIN)/python scripts/crowd_holdout.py runs/crowd_logo/last.safetensors $(CNN_RUNS) \
	  runs/crowd_ensemble.safetensors runs/crowd_ensemble_cal.safetensors --data-root $(FER2013) --votes $(VOTES) \
	  --threads 2 --unseen | tee runs/crowd_holdout.log
	$(BIN)/dfer weights export runs/crowd_ensemble_cal.safetensors runs/logo_former_fer2013.safetensors --frames 16
	$(BIN)/dfer eval --weights runs/logo_former_fer2013.safetensors --data-root $(FER2013) --split val \
	  --votes $(FER2013)/ferplus/val.csv --predictions runs/val_predictions.csv --plot runs/val.png --threads 2 \
	  --format json | tee runs/val_scores.json
	cp runs/logo_former_fer2013.safetensors weights/logo_former_fer2013.safetensors
	@echo "now set BUNDLED_SHA256 in dfer_cli/weights.py and the hash in weights/README.md to:"
	@sha256sum weights/logo_former_fer2013.safetensors

clean:
	rm -rf $(VENV) build *.egg-info
