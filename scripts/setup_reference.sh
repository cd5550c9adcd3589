#!/usr/bin/env bash
# Creates the PyTorch reference environment that scripts/bench_*.py measure jaxmia against, outside the project.
#
#   scripts/setup_reference.sh --ppa PATH --sg2 PATH [--gmi PATH] [--kedmi PATH] [--rlb PATH] [--brep PATH]
#                              [--torch VERSION] [--torchvision VERSION] [--python PY] [DIR]
#
# DIR (default: $JAXMIA_REFERENCE, else ../reference beside this checkout; never inside it) gets
#   DIR/venv           a virtual environment with torch, torchvision and what the reference modules import,
#                      all from the package registry (pip);
#   DIR/reference.env  JAXMIA_TORCH_PYTHON, JAXMIA_PPA_DIR, JAXMIA_SG2_DIR (and the checkouts' commits), which
#                      the benchmarks read (`--reference=DIR`, or $JAXMIA_REFERENCE); `set -a; . DIR/reference.env`
#                      also gives the tests that use JAXMIA_TORCH_PYTHON their PyTorch.
# --ppa and --sg2 are checkouts of LukasStruppek/Plug-and-Play-Attacks and NVlabs/stylegan2-ada-pytorch (their
# code is imported at run time, never copied into the project); a bare git repository (a mirror) is extracted
# with `git archive HEAD` into DIR/ppa or DIR/stylegan2-ada-pytorch.
# --gmi and --kedmi (optional; scripts/bench_lowres.py) are checkouts of AI-secure/GMI-Attack and
# SCccc21/Knowledge-Enriched-DMI, extracted the same way into DIR/GMI-Attack and DIR/Knowledge-Enriched-DMI, and
# written as JAXMIA_GMI_DIR / JAXMIA_KEDMI_DIR; KED-MI's `utils` (which its discriminator module imports) needs
# pandas, scipy, matplotlib and OpenCV, installed with --kedmi.
# --rlb and --brep (optional; scripts/bench_lowres.py's RLB-MI and BREP-MI rows) are checkouts of HanGyojin/RLB-MI
# and m-kahla/Label-Only-Model-Inversion-Attacks-via-Boundary-Repulsion, extracted the same way into DIR/RLB-MI
# and DIR/BREP-MI, and written as JAXMIA_RLB_DIR / JAXMIA_BREP_DIR (with JAXMIA_RLB_COMMIT / JAXMIA_BREP_COMMIT);
# BREP-MI's `utils` (imported by its `brep_mi_utils`) needs pandas and scipy, installed (with KED-MI's) by --brep.
#
# torchvision is installed without its dependencies, beside the torch chosen here: with torch 2.13.0 (a CPU
# build, the x86_64 default) torchvision 0.28.0's compiled operators do not load, and the benchmarks' PyTorch
# worker (scripts/bench_torch.py) declares the two operator schemas its import needs; only its pure-Python
# models and transforms are used. `--torch 2.14.1 --torchvision 0.29.1` is a matching pair (a CUDA build,
# ~5.5 GB). The worker's import check runs at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd -P)
case "$(uname -m)" in
  aarch64) torch_version=2.9.1 torchvision_version=0.24.1 ;;
  *) torch_version=2.13.0 torchvision_version=0.28.0 ;;
esac
python=python3 ppa='' sg2='' gmi='' kedmi='' rlb='' brep='' dir=${JAXMIA_REFERENCE:-$here/../reference}

usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ppa) ppa=$2; shift 2 ;;
    --sg2) sg2=$2; shift 2 ;;
    --gmi) gmi=$2; shift 2 ;;
    --kedmi) kedmi=$2; shift 2 ;;
    --rlb) rlb=$2; shift 2 ;;
    --brep) brep=$2; shift 2 ;;
    --torch) torch_version=$2; shift 2 ;;
    --torchvision) torchvision_version=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "error: unknown option $1" >&2; usage ;;
    *) dir=$1; shift ;;
  esac
done
[[ -n "$ppa" && -n "$sg2" ]] || { echo "error: give --ppa PATH and --sg2 PATH (checkouts of the reference code)" >&2; exit 2; }

dir=$(realpath -m "$dir")
inside() { [[ "$1/" == "$here/"* ]]; }
if inside "$dir"; then
  echo "error: $dir is inside the project ($here); the reference environment lives outside it" >&2
  exit 2
fi
mkdir -p "$dir"

# checkout PATH NAME FILE: the folder of the code (a bare repository extracted into DIR/NAME), checked for FILE.
checkout() {
  local path name=$2 file=$3
  path=$(cd "$1" && pwd -P) || { echo "error: no folder $1" >&2; exit 2; }
  if inside "$path"; then
    echo "error: $path is inside the project; keep the reference checkouts outside it" >&2
    exit 2
  fi
  if [[ "$(git -C "$path" rev-parse --is-bare-repository 2>/dev/null)" == true ]]; then
    rm -rf "$dir/$name.partial" && mkdir -p "$dir/$name.partial"
    git -C "$path" archive HEAD | tar -x -C "$dir/$name.partial"
    git -C "$path" rev-parse HEAD > "$dir/$name.partial/.commit"
    rm -rf "${dir:?}/$name" && mv "$dir/$name.partial" "$dir/$name"
    path=$dir/$name
  fi
  [[ -f "$path/$file" ]] || { echo "error: $path has no $file: not a checkout of $name" >&2; exit 2; }
  echo "$path"
}
commit() {
  if [[ -f "$1/.commit" ]]; then cat "$1/.commit"; else git -C "$1" rev-parse HEAD 2>/dev/null || echo unknown; fi
}
ppa=$(checkout "$ppa" ppa attacks/optimize.py)
sg2=$(checkout "$sg2" stylegan2-ada-pytorch training/networks.py)
needs=''  # what the final check imports besides torchvision
if [[ -n "$gmi" ]]; then gmi=$(checkout "$gmi" GMI-Attack Celeba/discri.py); needs+=gmi,; fi
if [[ -n "$kedmi" ]]; then kedmi=$(checkout "$kedmi" Knowledge-Enriched-DMI discri.py); needs+=kedmi,; fi
if [[ -n "$rlb" ]]; then rlb=$(checkout "$rlb" RLB-MI SAC.py); needs+=rlb,; fi
if [[ -n "$brep" ]]; then brep=$(checkout "$brep" BREP-MI brep_mi.py); needs+=brep,; fi

if [[ ! -x "$dir/venv/bin/python" ]]; then
  "$python" -m venv "$dir/venv"
fi
pip=("$dir/venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" "torch==$torch_version" numpy pillow requests tqdm absl-py  # absl-py: the golden scripts' flags
"${pip[@]}" --no-deps "torchvision==$torchvision_version"
if [[ -n "$kedmi" || -n "$brep" ]]; then "${pip[@]}" pandas scipy matplotlib opencv-python-headless; fi

env_file=$dir/reference.env
{
  echo "# Written by jaxmia's scripts/setup_reference.sh; read by scripts/bench_*.py."
  printf 'JAXMIA_TORCH_PYTHON=%q\n' "$dir/venv/bin/python"
  printf 'JAXMIA_PPA_DIR=%q\n' "$ppa"
  printf 'JAXMIA_SG2_DIR=%q\n' "$sg2"
  printf 'JAXMIA_PPA_COMMIT=%q\n' "$(commit "$ppa")"
  printf 'JAXMIA_SG2_COMMIT=%q\n' "$(commit "$sg2")"
  if [[ -n "$gmi" ]]; then printf 'JAXMIA_GMI_DIR=%q\nJAXMIA_GMI_COMMIT=%q\n' "$gmi" "$(commit "$gmi")"; fi
  if [[ -n "$kedmi" ]]; then
    printf 'JAXMIA_KEDMI_DIR=%q\nJAXMIA_KEDMI_COMMIT=%q\n' "$kedmi" "$(commit "$kedmi")"
  fi
  if [[ -n "$rlb" ]]; then printf 'JAXMIA_RLB_DIR=%q\nJAXMIA_RLB_COMMIT=%q\n' "$rlb" "$(commit "$rlb")"; fi
  if [[ -n "$brep" ]]; then printf 'JAXMIA_BREP_DIR=%q\nJAXMIA_BREP_COMMIT=%q\n' "$brep" "$(commit "$brep")"; fi
} > "$env_file.partial"
mv "$env_file.partial" "$env_file"

JAXMIA_PPA_DIR=$ppa JAXMIA_SG2_DIR=$sg2 JAXMIA_GMI_DIR=$gmi JAXMIA_KEDMI_DIR=$kedmi JAXMIA_RLB_DIR=$rlb \
  JAXMIA_BREP_DIR=$brep \
  "$dir/venv/bin/python" "$here/scripts/bench_torch.py" --check "$needs"
echo "Reference environment ready: $env_file"
