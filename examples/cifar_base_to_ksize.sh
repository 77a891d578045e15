#!/usr/bin/env bash
# The paper's kernel/width sequence (Table 1): cifar_base -> cifar_ksize (-> cifar_width needs `widen`).
# Usage: examples/cifar_base_to_ksize.sh [OUTDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(mktemp -d)}
mkdir -p "$out"
parent="$here/../fixtures/cifar_base.onnx"
python "$here/arch.py" "$parent" "(5:32)(1:32)(5:32)(1:32)(5:64)(1:64)" > /dev/null

# The second layer of each subnet grows its kernel from 1 to 3.
onnxmorph kernel "$parent" --layer conv1b --size 3 -o "$out/ks1.onnx" --force > /dev/null
onnxmorph kernel "$out/ks1.onnx" --layer conv2b --size 3 -o "$out/ks2.onnx" --force > /dev/null
onnxmorph kernel "$out/ks2.onnx" --layer conv3b --size 3 -o "$out/cifar_ksize.onnx" --force > /dev/null
python "$here/arch.py" "$out/cifar_ksize.onnx" "(5:32)(3:32)(5:32)(3:32)(5:64)(3:64)" > /dev/null
onnxmorph verify "$parent" "$out/cifar_ksize.onnx" | tail -n 1 | sed "s/^/cifar_ksize (5:32)(3:32)(5:32)(3:32)(5:64)(3:64): /"
