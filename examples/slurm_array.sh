#!/bin/bash
# A corpus on a SLURM cluster: 8 array tasks, each `dfer predict` on its shard of the
# inputs, all writing into one output folder (each task appends to its own manifest).
# Resubmitting the same script resumes: videos already done are skipped.
#
#   sbatch examples/slurm_array.sh /data/videos /data/dfer-out
#
# Shards are 1-based (--shard 1/8 ... 8/8), matching --array=1-8. The input and output
# paths must be on a filesystem every node sees at the same path. See docs/corpus.md.
#SBATCH --job-name=dfer-corpus
#SBATCH --array=1-8
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=dfer-%A_%a.log
set -euo pipefail

INPUTS=${1:?usage: sbatch slurm_array.sh INPUT_DIR OUTPUT_DIR}
OUT=${2:?usage: sbatch slurm_array.sh INPUT_DIR OUTPUT_DIR}
N=${SLURM_ARRAY_TASK_COUNT:-8}
K=${SLURM_ARRAY_TASK_ID:?run this with sbatch (it needs SLURM_ARRAY_TASK_ID)}

# Exit status 1 when some videos failed (listed in the manifest), 2 for a usage error.
exec dfer predict "$INPUTS" --recursive --output-dir "$OUT" \
    --shard "${K}/${N}" --threads "${SLURM_CPUS_PER_TASK:-1}"
