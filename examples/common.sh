# Shared by the example scripts: sourced after `parent` is set.
# Usage inside a script: source "$here/common.sh"
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"
check() {  # NAME EXPECTED_ARCH MODEL: the architecture must match and the function must equal the parent's
  python "$here/arch.py" "$3" "$2" >/dev/null
  onnxmorph verify "$parent" "$3" | tail -n 1 | sed "s/^/$1 $2: /"
}
m() { onnxmorph "$@" --force > /dev/null; }
