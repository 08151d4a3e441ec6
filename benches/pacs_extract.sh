#!/usr/bin/env bash
# Feature-extraction time of a data folder at the ViT-B/32 shape on the CPU: `fedclip embed`
# (decode, Pillow-exact preprocessing, the image tower) over every image, with random weights
# (speed does not depend on them). One line per engine variant, variants alternating. Usage:
#   bash benches/pacs_extract.sh DATA_DIR [VARIANT ...]
# A VARIANT is an environment setting or extra flags for that run, e.g. "FEDCLIP_ISA=reference"
# (the reference engine) or "--precision bf16"; "-" is the default engine.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: pacs_extract.sh DATA_DIR [VARIANT ...]}"
shift
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(-)
cargo build --release --quiet
model="target/bench-vitb32"
if [ ! -f "$model/model.safetensors" ]; then
  # The bundled tiny model's tokenizer and preprocessing, with the ViT-B/32 config and random
  # fp16 weights written by fedclip's own generator.
  mkdir -p "$model"
  cp weights/tiny-clip/{preprocessor_config.json,tokenizer.json,tokenizer_config.json} "$model/"
  cargo run --release --quiet --example write_random_model -- \
    tests/fixtures/configs/clip-vit-base-patch32.json "$model"
fi
images=$(find "$data" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | wc -l)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $images images in $data"
for round in 1 2; do
  for variant in "${variants[@]}"; do
    envs=() flags=()
    case "$variant" in
      -) ;;
      *=*) envs=("$variant") ;;
      *) read -r -a flags <<< "$variant" ;;
    esac
    start=$(date +%s.%N)
    env "${envs[@]}" target/release/fedclip embed --device cpu --model "$model" \
      --images "$data" --out target/bench-extract.safetensors "${flags[@]}" \
      > /dev/null 2> target/bench-extract.log || { cat target/bench-extract.log >&2; exit 1; }
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v n="$images" -v v="$variant" -v r="$round" \
      'BEGIN { printf "round %d, variant %s: %.1f s, %.2f images/s\n", r, v, e - s, n / (e - s) }'
  done
done
