#!/usr/bin/env bash
# Builds the `tessera:dev` image without a registry: a FROM scratch image
# holding the binary and every shared library `ldd` lists (the dynamic loader
# included), each at its absolute path. Prints the image id.
#
#   deploy/build-image.sh [BINARY]   # default $CARGO_TARGET_DIR/release/tessera
#                                    # (else /var/tmp/tessera-target/release/tessera)
set -euo pipefail

binary=${1:-${CARGO_TARGET_DIR:-/var/tmp/tessera-target}/release/tessera}
tag=${TESSERA_IMAGE:-tessera:dev}
deploy=$(cd "$(dirname "$0")" && pwd)

if [[ ! -x $binary ]]; then
    echo "build-image.sh: no tessera binary at $binary; build it first" >&2
    echo "  (cargo build --release --bin tessera) or pass its path" >&2
    exit 1
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# Debug info is most of the binary (~550 MB of a release build): dropped from
# the copy, symbols kept for backtraces. TESSERA_STRIP=0 keeps it.
if [[ ${TESSERA_STRIP:-1} != 0 ]] && command -v strip >/dev/null; then
    strip --strip-debug -o "$context/tessera" "$binary"
else
    cp "$binary" "$context/tessera"
fi
# `ldd` lines: "libz.so.1 => /lib/.../libz.so.1 (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)"
# and "linux-vdso.so.1 (0x..)" (in the kernel: skipped). A static binary lists none.
listing=$(ldd "$binary" 2>&1 || true)
if grep -q 'not found' <<<"$listing"; then
    echo "build-image.sh: $binary needs libraries this host lacks:" >&2
    grep 'not found' <<<"$listing" >&2
    exit 1
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$listing")
for lib in $libs; do
    mkdir -p "$context/root$(dirname "$lib")"
    cp -L "$lib" "$context/root$lib"
done
mkdir -p "$context/root/tmp"
chmod 1777 "$context/root/tmp"

cp "$deploy/Dockerfile" "$context/Dockerfile"
echo "build-image.sh: $binary with $(wc -w <<<"$libs") libraries -> $tag" >&2
docker build --quiet --tag "$tag" "$context" >/dev/null
docker image inspect --format '{{.Id}}' "$tag"
