#!/usr/bin/env bash
# The growth sequences as plans (examples/plans/*.toml), each one `onnxmorph grow`: one load, the steps in memory,
# one check against the first parent, one save. Each line: the plan, the architecture it must reach, the check.
# Usage: examples/grow_plans.sh [OUTDIR [PLAN ...]]   (PLAN: a name from examples/plans/, default all of them)
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../fixtures"
source "$here/common.sh"
shift || true
plans=("$@")
[ ${#plans[@]} -gt 0 ] || plans=(cifar_111_to_3333 cifar_base_to_width vgg16_netmorph resnet_stages llama_pro)

grow() {  # PLAN PARENT EXPECTED CHECKER...: grow PARENT by the plan, then check the architecture it reached
  local plan=$1 parent=$2 expected=$3
  shift 3
  onnxmorph grow "$parent" --plan "$here/plans/$plan.toml" -o "$out/$plan.onnx" --force | grep '^PASSED' \
    | sed "s/^/$plan $expected: /"
  "$@" "$out/$plan.onnx" "$expected" > /dev/null
}

for plan in "${plans[@]}"; do
  case $plan in
    cifar_111_to_3333) grow "$plan" "$fixtures/cifar10_quick.onnx" \
      "(5:128)(3:128)(1:32)(5:128)(3:128)(1:32)(5:256)(3:256)(1:64)(5:256)(3:256)(1:64)" python "$here/arch.py" ;;
    cifar_base_to_width) grow "$plan" "$fixtures/cifar_base.onnx" "(5:64)(3:32)(5:64)(3:32)(5:128)(3:64)" \
      python "$here/arch.py" ;;
    vgg16_netmorph) grow "$plan" "$fixtures/vgg16_small.onnx" \
      "(3:8)(3:8)(3:32)(1:8)(3:16)(3:16)(3:64)(1:16)(3:32)(3:32)(3:32)(3:128)(1:32)(3:64)(3:64)(3:64)(3:64)(3:64)(3:64)" \
      python "$here/arch.py" ;;
    resnet_stages) python "$here/resnet_stages.py" build "$out/resnet_111.onnx"
      grow "$plan" "$out/resnet_111.onnx" 4,4,4 python "$here/resnet_stages.py" stages ;;
    llama_pro) grow "$plan" "$fixtures/hf_llama_legacy17.onnx" "blocks 3, mlp 128,128,128" \
      python "$here/arch.py" --decoder ;;
    *) echo "unknown plan $plan" >&2; exit 2 ;;
  esac
done
