#!/usr/bin/env bash
# The one GPU setup every GPU job sources, on the device machine, from the repo root:
#   source gpu/setup.sh q05 q15
# For each model short name (q05 = Qwen2.5-Coder-0.5B-Instruct, q15 = -1.5B-Instruct, smol = SmolLM2-135M):
# concatenates the GGUF chunks staged in /tmp/models (or carried in .stage), checks the sha256, and converts
# GGUF -> bf16 safetensors once per machine into /tmp/<short> (an HF folder the configs point at).
# Installs the carried wheels (.whl: kvpress and the transformers it pins, datasets, gguf, wandb) into
# /tmp/site once per machine, and exports PYTHONPATH and the offline/quiet variables.
# Staging the chunks (one call per chunk; gpu/README.md): ../shared/tools/models.py split ... --dest .stage.
_hz_opts=$(set +o)  # sourced: the caller's shell options come back at the end
set -euo pipefail
declare -A GGUF=([q05]=qwen2.5-coder-0.5b-instruct [q15]=qwen2.5-coder-1.5b-instruct [smol]=smollm2-135m-instruct)
declare -A SHA=(  # of the assembled GGUF files, as ../shared/tools/models.py lists them
  [qwen2.5-coder-0.5b-instruct]=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  [qwen2.5-coder-1.5b-instruct]=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  [smollm2-135m-instruct]=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53)
mkdir -p /tmp/models
mv .stage/*.part* /tmp/models/ 2>/dev/null || true
if [ ! -f /tmp/site/.installed ]; then
  compgen -G ".whl/*.whl" > /dev/null || { echo "gpu/setup.sh: no wheels in .whl and none installed on this machine: carry .whl"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  touch /tmp/site/.installed
fi
# W&B (wandb and its dependencies, .whl/wandb; `pip download wandb --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 -d .whl/wandb`, 26 MB): its own folder, *last* on the path, so the
# image's packages (pydantic, protobuf, ...) win and only what the image lacks comes from it.
if compgen -G ".whl/wandb/*.whl" > /dev/null && [ ! -f /tmp/site-wandb/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-wandb .whl/wandb/*.whl
  touch /tmp/site-wandb/.installed
fi
export PYTHONPATH=/tmp/site:$PWD:/tmp/site-wandb HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-offline}
for short in "$@"; do
  name=${GGUF[$short]:?unknown model $short (known: ${!GGUF[*]})}
  [ -f "/tmp/$short/config.json" ] && continue
  parts=(/tmp/models/"$name".gguf.part*)
  if [ -e "${parts[0]}" ]; then
    cat "${parts[@]}" > "/tmp/models/$name.gguf"
  elif [ ! -f "/tmp/models/$name.gguf" ]; then
    echo "gpu/setup.sh: no chunks of $name in /tmp/models; stage them first (gpu/README.md)"; exit 2
  fi
  got=$(sha256sum "/tmp/models/$name.gguf" | cut -d' ' -f1)
  if [ "$got" != "${SHA[$name]}" ]; then
    echo "gpu/setup.sh: $name.gguf sha256 $got != ${SHA[$name]}: a chunk is missing or broken; stage again"
    rm -f "/tmp/models/$name.gguf"; exit 2
  fi
  rm -f "${parts[@]}"
  t0=$SECONDS
  # a failed conversion (e.g. the wheels not installed: no gguf) keeps the assembled GGUF for the next call
  python3 -c 'import sys; from hazard.models import convert_gguf; convert_gguf(*sys.argv[1:])' \
    "/tmp/models/$name.gguf" "/tmp/$short" \
    || { echo "gpu/setup.sh: converting $name failed; the GGUF stays in /tmp/models"; eval "$_hz_opts"; return 2 2>/dev/null || exit 2; }
  rm -f "/tmp/models/$name.gguf"
  echo "gpu/setup.sh: $name -> /tmp/$short in $((SECONDS - t0)) s"
done
eval "$_hz_opts"
