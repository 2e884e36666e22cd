#!/usr/bin/env bash
# Smoke test of the SGLang teacher and rollout backends on a real GPU, for a runtime image that has
# SGLang (`pip install 'kubedistill[sglang]'`) and a visible CUDA device, e.g.
#   docker run --rm --gpus 1 IMAGE bash images/runtime/gpu-smoke.sh
#   kubectl exec -it RAY_WORKER_POD -- bash images/runtime/gpu-smoke.sh
# The checks live in kubedistill.runtime.engines.sglang.smoke (its docstring lists them: teacher hidden states
# through the patched scheduler's shared memory against transformers' logits, the colocated CPU-tensor push
# in buckets within one weight-update session, the broadcast sync); this wrapper only refuses to start where
# they cannot run. Exit status 0: all checks passed.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import importlib.util
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu-smoke: no CUDA device is visible")
if importlib.util.find_spec("sglang") is None:
    sys.exit("gpu-smoke: SGLang is not installed; pip install 'kubedistill[sglang]'")
PY

exec "$PYTHON" -m kubedistill.runtime.engines.sglang.smoke "$@"
