# Everything a fresh machine needs: `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench starter-weights starter-weights-v2

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
	  --template fer2013 --model-opt dim=256 --model-opt depth=2 --model-opt heads=4 --model-opt window=2,7,7 \
	  --optimizer adamw --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --batch-size 64 \
	  --epochs 14 --threads 1 --workers 1 --output runs/fer2013_stage1
	$(BIN)/dfer train --data-root $(FER2013) --input-size 48 --frames 16 --grayscale \
	  --template fer2013 --init runs/fer2013_stage1/last.safetensors --freeze-backbone \
	  --optimizer adamw --lr 3e-4 --weight-decay 0.05 --warmup-epochs 0.1 --batch-size 32 \
	  --epochs 1 --threads 2 --workers 1 --output runs/fer2013_stage2
	$(BIN)/dfer weights export runs/fer2013_stage2/last.safetensors weights/logo_former_fer2013.safetensors
	$(BIN)/dfer eval --weights weights/logo_former_fer2013.safetensors --data-root $(FER2013) --split val

# The v2 candidate of the model card (64 px, 4x4 grid, 2x2x2 windows; not the default yet):
# one stage with 10 % of train held out for selection (about 2 hours on 2 CPU cores), the
# prior shift chosen on the held-out split, export as a 16-frame model, FER2013 val once.
# An interrupted run continues with `sh runs/starter_v2/command.sh`.
starter-weights-v2: $(STAMP)
	$(BIN)/dfer train --data-root $(FER2013) --input-size 64 --frames 1 --grayscale --template fer2013 \
	  --model-opt dim=256 --model-opt depth=2 --model-opt heads=4 --model-opt window=2,2,2 \
	  --holdout 0.1 --optimizer adamw --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --batch-size 128 \
	  --loss ce --label-smoothing 0.1 --logit-adjust 1.0 --clip-grad 5 --erase 0.25 \
	  --precision fp32 --epochs 16 --threads 2 --log-every 50 --output runs/starter_v2
	$(BIN)/python scripts/prior_shift.py runs/starter_v2/best.safetensors --tta flip
	$(BIN)/dfer weights export runs/starter_v2/best.safetensors runs/starter_v2/logo_former_fer2013_v2.safetensors \
	  --frames 16 --prior-shift 0.2
	$(BIN)/dfer eval --weights runs/starter_v2/logo_former_fer2013_v2.safetensors --data-root $(FER2013) \
	  --split val --tta flip

clean:
	rm -rf $(VENV) build *.egg-info
