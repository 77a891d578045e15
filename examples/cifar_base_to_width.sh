#!/usr/bin/env bash
# The paper's kernel/width sequence (Table 1): cifar_base -> cifar_ksize -> cifar_width.
# Each step checks the architecture Table 1 gives and verifies the function against cifar_base.
# Usage: examples/cifar_base_to_width.sh [OUTDIR]
here=$(cd "$(dirname "$0")" && pwd)
parent="$here/../fixtures/cifar_base.onnx"
source "$here/common.sh"
python "$here/arch.py" "$parent" "(5:32)(1:32)(5:32)(1:32)(5:64)(1:64)" > /dev/null

# The second layer of each subnet grows its kernel from 1 to 3.
m kernel "$parent" --layer conv1b --size 3 -o "$out/ks1.onnx"
m kernel "$out/ks1.onnx" --layer conv2b --size 3 -o "$out/ks2.onnx"
m kernel "$out/ks2.onnx" --layer conv3b --size 3 -o "$out/cifar_ksize.onnx"
check cifar_ksize "(5:32)(3:32)(5:32)(3:32)(5:64)(3:64)" "$out/cifar_ksize.onnx"

# The first layer of each subnet doubles its channels.
m widen "$out/cifar_ksize.onnx" --layer conv1a --width 2x -o "$out/w1.onnx"
m widen "$out/w1.onnx" --layer conv2a --width 2x -o "$out/w2.onnx"
m widen "$out/w2.onnx" --layer conv3a --width 2x -o "$out/cifar_width.onnx"
check cifar_width "(5:64)(3:32)(5:64)(3:32)(5:128)(3:64)" "$out/cifar_width.onnx"
