#!/usr/bin/env bash
# The issue-5 training runs on the CIFAR-10 subset (5085 train / 1017 test images), CPU-sized.
# Usage: bash benchmarks/training_runs.sh DATA_DIR [queue-a|queue-b|all]
# Each run writes runs/issue5/<name>/ (config.json, metrics.jsonl, checkpoints/).
# Two queues so that two single-threaded processes can share a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${1:?give the folder holding cifar-10-batches-py}"
QUEUE="${2:-all}"
RUN=(.venv/bin/robustode train --data cifar10 --data-dir "$DATA_DIR" --no-progress-bar --overwrite
     --batch-size 128 --momentum 0.9 --seed 0 --checkpoint-every 1)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

queue_a() {
  "${RUN[@]}" --run-dir runs/issue5/resnet10-w32-natural --model resnet10 --model-opt width=32 \
    --defense natural --epochs 20 --lr 0.05 --weight-decay 5e-4 --milestones 15
  "${RUN[@]}" --run-dir runs/issue5/resnet10-w16-pgd_at --model resnet10 --model-opt width=16 \
    --defense pgd_at --epochs 5 --lr 0.05 --weight-decay 5e-4 --milestones 4
  "${RUN[@]}" --run-dir runs/issue5/resnet10-w16-trades --model resnet10 --model-opt width=16 \
    --defense trades --epochs 5 --lr 0.05 --weight-decay 5e-4 --milestones 4
}

queue_b() {
  "${RUN[@]}" --run-dir runs/issue5/soblock-w16-euler-natural --model soblock \
    --model-opt width=16 --model-opt method=euler --model-opt step_size=0.25 \
    --defense natural --epochs 4 --lr 0.05 --weight-decay 5e-4
  "${RUN[@]}" --run-dir runs/issue5/soblock-w16-dopri5-natural --model soblock \
    --model-opt width=16 --model-opt method=dopri5 --model-opt tol=0.1 \
    --defense natural --epochs 4 --lr 0.05 --weight-decay 5e-4
  for defense in natural lad lad_sm; do
    "${RUN[@]}" --run-dir "runs/issue5/preact_resnet56-$defense" --model preact_resnet56 \
      --defense "$defense" --epochs 5 --lr 0.1 --weight-decay 1e-4 --milestones 4
  done
}

case "$QUEUE" in
  queue-a) queue_a ;;
  queue-b) queue_b ;;
  all) queue_a; queue_b ;;
  *) echo "unknown queue '$QUEUE'; choose queue-a, queue-b or all" >&2; exit 2 ;;
esac
