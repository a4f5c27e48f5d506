#!/usr/bin/env bash
# The kernel tests for aarch64 (NEON against the scalar references), cross-compiled here and run under qemu-user,
# twice: on qemu's default CPU (every extension) and on an ARMv8.0 one.
# Installs what it needs: the Rust aarch64 standard library (rustup), a cross linker and qemu-user (Debian).
# Exits 0 with a note when the aarch64 target cannot be installed (no access to Rust's distribution server).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$target"; then
    if ! rustup target add "$target"; then
        echo "note: the $target standard library cannot be installed here; the aarch64 kernel tests were NOT run" >&2
        exit 0
    fi
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_=sudo
    $sudo_ apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q gcc-aarch64-linux-gnu qemu-user >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --release -p flash-moe-kernels --target "$target"
# Again on an ARMv8.0 CPU model (qemu's default one has every extension): the kernels chosen at run time by
# extension (the `sdot` integer dots, where dotprod is present) fall back to their base NEON twins there.
echo "== again on cortex-a72 (no dotprod) =="
QEMU_CPU=cortex-a72 cargo test --release -p flash-moe-kernels --target "$target"
