#!/usr/bin/env bash
# Grow a small ResNet stage by stage, in the spirit of Istrate et al. (incremental training): start with one
# basic block per stage, then add identity-start blocks (deepen --block) one stage at a time. Each step checks
# the blocks per stage and verifies the function against the first parent.
# Usage: examples/grow_resnet_stages.sh [OUTDIR]
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
parent="$out/resnet_111.onnx"
python "$here/resnet_stages.py" build "$parent"
check_stages() {  # NAME EXPECTED MODEL: blocks per stage must match; the function must equal the first parent's
  python "$here/resnet_stages.py" stages "$3" "$2" >/dev/null
  onnxmorph verify "$parent" "$3" | tail -n 1 | sed "s/^/$1 $2: /"
}

m deepen "$parent" --block s1_add -o "$out/resnet_211.onnx"
check_stages resnet_211 2,1,1 "$out/resnet_211.onnx"

m deepen "$out/resnet_211.onnx" --block s2_add -o "$out/resnet_221.onnx"
check_stages resnet_221 2,2,1 "$out/resnet_221.onnx"

m deepen "$out/resnet_221.onnx" --block s3_add --random -o "$out/resnet_222.onnx"
check_stages resnet_222 2,2,2 "$out/resnet_222.onnx"

# The next round adds two blocks to each stage at once, after the newest block of the stage.
prev="$out/resnet_222.onnx"
for s in 1 2 3; do
  next="$out/resnet_round2_s$s.onnx"
  m deepen "$prev" --block "s${s}_add/morph_block1/s${s}_add" --count 2 -o "$next"
  prev="$next"
done
cp "$prev" "$out/resnet_444.onnx"
check_stages resnet_444 4,4,4 "$out/resnet_444.onnx"
