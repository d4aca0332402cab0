#!/usr/bin/env bash
# Regenerates vendor/turbojpeg-sys: the turbojpeg-sys crate from crates.io (its libjpeg-turbo
# source included), checksum-verified, with one line changed: libjpeg-turbo's Huffman decoder
# looks 10 bits ahead instead of 8 (HUFF_LOOKAHEAD in src/jdhuff.h), so codes of 9 and 10 bits,
# common in detailed photos, are decoded by one table lookup instead of the bit-by-bit loop.
# Measured on this machine (imaging/bench/sharp-task.sh, docs/performance.md): decoding a
# detailed 2725×2225 photo at 1/2 scale 7–9% faster. The table grows from 1 KiB to 4 KiB per
# Huffman table. Nothing else differs from the published crate.
#
# To take a new libjpeg-turbo (a security fix, say): set VERSION and SHA256 to the new
# turbojpeg-sys release, run this script, build with `--features turbojpeg` and run the imaging
# tests. The workspace's Cargo.toml points `[patch.crates-io] turbojpeg-sys` here.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=1.2.0
SHA256=49b5a974bc59382d35927e3a07eef2ba9a24fe7227cefe52ec44b508e1b90f86
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -sSfL -o "$tmp/crate.tar.gz" "https://static.crates.io/crates/turbojpeg-sys/turbojpeg-sys-$VERSION.crate"
echo "$SHA256  $tmp/crate.tar.gz" | sha256sum -c --quiet
tar -xzf "$tmp/crate.tar.gz" -C "$tmp"
rm -rf turbojpeg-sys
mv "$tmp/turbojpeg-sys-$VERSION" turbojpeg-sys
h=turbojpeg-sys/libjpeg-turbo/src/jdhuff.h
sed -i 's|^#define HUFF_LOOKAHEAD  8       /\* # of bits of lookahead \*/$|#define HUFF_LOOKAHEAD  10      /* # of bits of lookahead (clinic: 8 upstream) */|' "$h"
grep -q '^#define HUFF_LOOKAHEAD  10 ' "$h" || { echo "the HUFF_LOOKAHEAD line in $h has changed: patch by hand" >&2; exit 1; }
echo "vendor/turbojpeg-sys: turbojpeg-sys $VERSION, HUFF_LOOKAHEAD 10"
