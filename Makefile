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

# Rebuilds weights/logo_former_fer2013.safetensors exactly as its model card says
# (about 70 minutes on 2 CPU cores), then measures it on FER2013 val.
starter-weights: $(STAMP)
	$(BIN)/dfer train --data-root $(FER2013) --input-size 48 --frames 1 --grayscale \
	  --template fer2013 --model-opt dim=256 --model-opt depth=2 --model-opt heads=4 \
	  --optimizer adamw --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --batch-size 64 \
	  --epochs 14 --threads 1 --workers 1 --output runs/fer2013_stage1
	$(BIN)/dfer train --data-root $(FER2013) --input-size 48 --frames 16 --grayscale \
	  --template fer2013 --init runs/fer2013_stage1/last.safetensors --freeze-backbone \
	  --optimizer adamw --lr 3e-4 --weight-decay 0.05 --warmup-epochs 0.1 --batch-size 32 \
	  --epochs 1 --threads 2 --workers 1 --output runs/fer2013_stage2
	$(BIN)/dfer weights export runs/fer2013_stage2/last.safetensors weights/logo_former_fer2013.safetensors
	$(BIN)/dfer eval --weights weights/logo_former_fer2013.safetensors --data-root $(FER2013) --split val

clean:
	rm -rf $(VENV) build *.egg-info
