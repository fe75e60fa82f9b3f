# Everything a fresh machine needs: `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench starter-weights

# FER2013 in image-folder form (train/ and val/ with one folder per class).
FER2013 ?= ../shared/data/fer2013

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfer predict examples/single_face_smile.mp4 --window 1 --stride 0.5

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py

# Rebuilds weights/logo_former_fer2013.safetensors exactly as its model card says (one
# stage on FER2013 train with 10 % held out for model selection; about 110 minutes on 2 CPU
# cores), exports the best epoch as a 16-frame model, then measures it on FER2013 val once.
# An interrupted run continues with `sh runs/starter/command.sh`.
starter-weights: $(STAMP)
	$(BIN)/dfer train --data-root $(FER2013) --input-size 64 --frames 1 --grayscale --template fer2013 \
	  --model-opt dim=256 --model-opt depth=2 --model-opt heads=4 --model-opt window=2,2,2 \
	  --holdout 0.1 --optimizer adamw --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --batch-size 128 \
	  --loss ce --label-smoothing 0.1 --logit-adjust 1.0 --clip-grad 5 --erase 0.25 \
	  --precision fp32 --epochs 16 --threads 2 --log-every 50 --output runs/starter
	$(BIN)/dfer weights export runs/starter/best.safetensors weights/logo_former_fer2013.safetensors --frames 16
	$(BIN)/dfer eval --weights weights/logo_former_fer2013.safetensors --data-root $(FER2013) --split val

clean:
	rm -rf $(VENV) build *.egg-info
