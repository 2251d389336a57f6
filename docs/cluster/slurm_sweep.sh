#!/bin/bash
# A keras-sam sweep as a SLURM job array: array task i runs shard i+1 of N,
# all tasks appending to one --out folder on the shared filesystem.
#
#   sbatch --array=0-7 docs/cluster/slurm_sweep.sh cifar10 --preset paper \
#       --out /shared/results/cifar10-paper --data-dir /shared/tensorflow_datasets
#   # afterwards (or at any time, from whatever is finished):
#   keras-sam sweep cifar10 --preset paper --out /shared/results/cifar10-paper --summarize
#
# Re-submitting the same array resumes: finished runs are skipped.
#SBATCH --job-name=keras-sam-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --output=keras-sam-%A_%a.out
set -euo pipefail
KERAS_SAM=${KERAS_SAM:-keras-sam}
: "${SLURM_ARRAY_TASK_ID:?run this script as a job array: sbatch --array=0-N-1 ...}"
first=${SLURM_ARRAY_TASK_MIN:-0}
shard="$((SLURM_ARRAY_TASK_ID - first + 1))/${SLURM_ARRAY_TASK_COUNT}"
exec $KERAS_SAM sweep "$@" --shard "$shard"
