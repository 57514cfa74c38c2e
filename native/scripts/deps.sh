#!/usr/bin/env bash
# Dependencies of the native runtime, for `make native` on a fresh Debian/Ubuntu machine.
#
#   native/scripts/deps.sh BUILD_DIR PYTHON
#
# 1. Debian packages (compiler, CMake, OpenCV, nlohmann-json, ICU, GoogleTest, zlib,
#    OpenSSL's libcrypto for sha256), installed with apt-get when one is missing
#    (as root, or through sudo).
# 2. ONNX Runtime's C/C++ headers: Debian trixie's libonnxruntime-dev, fetched with
#    `apt-get download` through a temporary apt configuration that reuses the archive
#    URI of this machine's own apt sources with the suite changed to trixie, then
#    unpacked with `dpkg -x` into BUILD_DIR/deps/onnxruntime-dev.
# 3. The library to link: PYTHON's onnxruntime wheel (onnxruntime/capi/libonnxruntime.so.1.*),
#    linked as BUILD_DIR/deps/lib/libonnxruntime.so.1 (its soname, which the wheel does not
#    ship) and written with the header folder to BUILD_DIR/deps/onnxruntime.cmake.
# Each step is skipped when its result is already there.
set -euo pipefail

build_dir=${1:?usage: deps.sh BUILD_DIR PYTHON}
python=${2:?usage: deps.sh BUILD_DIR PYTHON}
deps_dir="$build_dir/deps"
mkdir -p "$deps_dir"

packages=(g++ cmake make pkg-config libopencv-dev nlohmann-json3-dev libicu-dev libgtest-dev zlib1g-dev libssl-dev)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "deps.sh: installing ${missing[*]}"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# The first Debian archive URI of this machine's apt sources (one-line and deb822 formats),
# skipping security and update archives.
archive_uri() {
    local files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    { awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "${files[@]}"
      awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "${files[@]}"; } |
        grep -v -e security -e updates | grep -m1 -E '/debian/?$' || true
}

fetch_onnxruntime_headers() {
    local dest="$deps_dir/onnxruntime-dev"
    if [ -f "$dest/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then return; fi
    local uri
    uri=$(archive_uri)
    if [ -z "$uri" ]; then
        echo "deps.sh: no Debian archive in /etc/apt/sources.list*; give ONNX Runtime headers with -DONNXRUNTIME_ROOT=" >&2
        exit 2
    fi
    local apt_dir
    apt_dir=$(mktemp -d)
    trap 'rm -rf "$apt_dir"' RETURN
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb $uri trixie main" > "$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
                -o "Dir::State::Status=/var/lib/dpkg/status" -o "Debug::NoLocking=1"
                -o "APT::Sandbox::User=$(id -un)")   # the temporary folders are ours, not apt's user's
    echo "deps.sh: fetching libonnxruntime-dev (trixie) for the ONNX Runtime headers"
    apt-get "${opts[@]}" update -q >/dev/null
    (cd "$apt_dir" && apt-get "${opts[@]}" download -q libonnxruntime-dev >/dev/null)
    dpkg -x "$apt_dir"/libonnxruntime-dev_*.deb "$dest"
}

write_onnxruntime_cmake() {
    local lib
    lib=$("$python" - <<'PY'
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.*")))
print(libs[-1] if libs else "")
PY
)
    if [ -z "$lib" ]; then
        echo "deps.sh: $python's onnxruntime has no capi/libonnxruntime.so.1.*" >&2
        exit 2
    fi
    mkdir -p "$deps_dir/lib"
    ln -sf "$lib" "$deps_dir/lib/libonnxruntime.so.1"
    cat > "$deps_dir/onnxruntime.cmake" <<CMAKE
# Written by native/scripts/deps.sh: the headers from Debian's libonnxruntime-dev, the library from PyPI's wheel.
set(ONNXRUNTIME_INCLUDE_DIR "$(cd "$deps_dir/onnxruntime-dev/usr/include/onnxruntime" && pwd)")
set(ONNXRUNTIME_LIBRARY "$(cd "$deps_dir/lib" && pwd)/libonnxruntime.so.1")
CMAKE
}

install_packages
fetch_onnxruntime_headers
write_onnxruntime_cmake
