#!/usr/bin/env bash
# VGG16 -> VGG16(NetMorph) (Table 2 of the network morphism paper) on vgg16_small (VGG16 with channels / 8):
# a (3:Cx4)(1:C) pair that starts as the identity after the last conv of each of the first three blocks.
# Usage: examples/vgg16_netmorph.sh [OUTDIR]
here=$(cd "$(dirname "$0")" && pwd)
parent="$here/../fixtures/vgg16_small.onnx"
source "$here/common.sh"
python "$here/arch.py" "$parent" "(3:8)(3:8)(3:16)(3:16)(3:32)(3:32)(3:32)(3:64)(3:64)(3:64)(3:64)(3:64)(3:64)" > /dev/null

m deepen "$parent" --after conv1_2 --k1 3 --k2 1 --width 4x -o "$out/v1.onnx"
m deepen "$out/v1.onnx" --after conv2_2 --k1 3 --k2 1 --width 4x -o "$out/v2.onnx"
m deepen "$out/v2.onnx" --after conv3_3 --k1 3 --k2 1 --width 4x -o "$out/vgg16_netmorph.onnx"
check "VGG16(NetMorph)" "(3:8)(3:8)(3:32)(1:8)(3:16)(3:16)(3:64)(1:16)(3:32)(3:32)(3:32)(3:128)(1:32)(3:64)(3:64)(3:64)(3:64)(3:64)(3:64)" "$out/vgg16_netmorph.onnx"
