#!/usr/bin/env bash
# The paper's depth sequence (Table 1): cifar_111 -> 211 -> 222 -> 2222 -> 3333, from cifar10_quick.
# Each step checks the architecture Table 1 gives and verifies the function against the original parent.
# Usage: examples/cifar_111_to_3333.sh [OUTDIR]
here=$(cd "$(dirname "$0")" && pwd)
parent="$here/../fixtures/cifar10_quick.onnx"
source "$here/common.sh"

m deepen "$parent" --layer conv1 --k1 5 --k2 1 --width 4x -o "$out/cifar_211.onnx"
check cifar_211 "(5:128)(1:32)(5:32)(5:64)" "$out/cifar_211.onnx"

m deepen "$out/cifar_211.onnx" --layer conv2 --k1 5 --k2 1 --width 4x -o "$out/cifar_222a.onnx"
m deepen "$out/cifar_222a.onnx" --layer conv3 --k1 5 --k2 1 --width 4x -o "$out/cifar_222.onnx"
check cifar_222 "(5:128)(1:32)(5:128)(1:32)(5:256)(1:64)" "$out/cifar_222.onnx"

# A new [(5:64x4)(1:64)] subnet that starts as the identity, after the last one.
m deepen "$out/cifar_222.onnx" --after conv3/morph_l1 --k1 5 --k2 1 --width 4x -o "$out/cifar_2222.onnx"
check cifar_2222 "(5:128)(1:32)(5:128)(1:32)(5:256)(1:64)(5:256)(1:64)" "$out/cifar_2222.onnx"

# Each (1:C) layer becomes (3:Cx4)(1:C).
prev="$out/cifar_2222.onnx"
for layer in conv1/morph_l1 conv2/morph_l1 conv3/morph_l1 conv3/morph_l1/morph_after/morph_l1; do
  next="$out/cifar_3333.$(echo "$layer" | tr '/' '_').onnx"
  m deepen "$prev" --layer "$layer" --k1 3 --k2 1 --width 4x -o "$next"
  prev="$next"
done
cp "$prev" "$out/cifar_3333.onnx"
check cifar_3333 "(5:128)(3:128)(1:32)(5:128)(3:128)(1:32)(5:256)(3:256)(1:64)(5:256)(3:256)(1:64)" "$out/cifar_3333.onnx"
