#!/bin/bash
# A keras-sam sweep on a multi-GPU workstation: one process per GPU, each
# pinned with CUDA_VISIBLE_DEVICES and running one shard, all into one --out
# folder; then the summary and plots of everything finished.
#
#   docs/cluster/workstation_sweep.sh cifar10 --preset paper --out results/cifar10-paper
#   GPUS=0,2 docs/cluster/workstation_sweep.sh mnist --preset paper --out results/mnist
#
# GPUS defaults to $CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists.
# Logs: $LOG_DIR/shard-K-of-N.log (default ./logs). Re-running resumes.
set -euo pipefail
KERAS_SAM=${KERAS_SAM:-keras-sam}
if [ -z "${GPUS:-}" ]; then
  GPUS=${CUDA_VISIBLE_DEVICES:-$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)}
fi
IFS=, read -ra gpu_ids <<< "$GPUS"
n=${#gpu_ids[@]}
log_dir=${LOG_DIR:-logs}
mkdir -p "$log_dir"
pids=()
for k in $(seq 1 "$n"); do
  CUDA_VISIBLE_DEVICES=${gpu_ids[$((k - 1))]} \
    $KERAS_SAM sweep "$@" --shard "$k/$n" > "$log_dir/shard-$k-of-$n.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
$KERAS_SAM sweep "$@" --summarize
exit $status
