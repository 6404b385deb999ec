#!/bin/sh
# Remove from the serving virtual environment what `gateway serve` never loads, then
# compile what is left to bytecode (the root filesystem is read-only at run time, so
# Python could not cache it there). Run in the image's serving-deps stage:
#   deploy/container/slim-venv.sh /opt/venv
# tests/deploy/test_image.py serves from the result: a removal that breaks serving fails it.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "slim-venv: no site-packages under $venv" >&2; exit 2; }

# onnxruntime: the CPU wheel's Python module is one self-contained extension, and
# libonnxruntime.so (35 MB) the C API for other programs; it goes unless another library
# beside it names it (a GPU wheel's providers may). tools/transformers/quantization are
# offline optimisation scripts.
capi="$site"/onnxruntime/capi
for lib in "$capi"/libonnxruntime.so.*; do
  [ -e "$lib" ] || continue
  if ! grep -l -a -F libonnxruntime.so "$capi"/*.so* | grep -q -v -x -F "$lib"; then
    rm -f "$lib"
  fi
done
rm -rf "$site"/onnxruntime/tools "$site"/onnxruntime/transformers "$site"/onnxruntime/quantization \
  "$site"/onnxruntime/datasets "$site"/onnxruntime/ThirdPartyNotices.txt
# numpy: Fortran and C build tooling, C headers, its own test suite.
rm -rf "$site"/numpy/f2py "$site"/numpy/distutils "$site"/numpy/_core/include \
  "$site"/numpy/_core/lib/pkgconfig "$site"/numpy/_pyinstaller "$site"/numpy/testing/_private/extbuild.py
find "$site"/numpy -depth -type d -name tests -exec rm -rf {} +
# Everywhere: type stubs, C/Cython sources and headers, stale bytecode, installers.
find "$site" \( -name '*.pyi' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.h' -o -name '*.c' \
  -o -name '*.cpp' \) -type f -delete
find "$venv" -depth -name __pycache__ -type d -exec rm -rf {} +
rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/_distutils_hack "$site"/uv "$site"/uv-*
"$venv"/bin/python -m compileall -q -j 0 "$site" >/dev/null
