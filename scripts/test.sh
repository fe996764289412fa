#!/usr/bin/env bash
# The whole test suite, on a fresh Debian/Ubuntu machine with Rust.
#
# 1. Makes sure a real wgpu adapter exists: Mesa's software Vulkan driver
#    (lavapipe, package mesa-vulkan-drivers) when there is no GPU. Installs it
#    with apt-get when it can (root, or passwordless sudo); otherwise says
#    exactly what to install and stops.
# 2. Runs every test in the workspace (engine unit tests, integration tests on
#    real wgpu buffers, doctests of the README).
# 3. Runs the demo as an end-to-end check: it exits non-zero if any session
#    ended twice, any buffer leaked (by wgpu's own counters), or any error occurred.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have_lavapipe() { compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null; }
have_lavapipe || missing+=(mesa-vulkan-drivers)

if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: missing system packages: ${missing[*]}"
  if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
      echo "test.sh: cannot install them without root. Run:  sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  else
    echo "test.sh: no apt-get here. Install Mesa's Vulkan software driver (lavapipe), or run on a machine with a GPU and its Vulkan driver." >&2
    exit 1
  fi
fi

# Lavapipe warns on stderr when this is unset; give it a private directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
fi

cargo test --workspace --locked
echo "test.sh: demo end-to-end check"
cargo run --quiet --locked --example demo -- --sessions 300 --turns 4 --json | tail -n 1
echo "test.sh: demo expiry scenario (idle timeouts, TTLs, leases, context resets; wgpu counters back at baseline)"
# Its remote workers die on purpose, so `lease.revoked` WARN lines are expected;
# the demo itself fails on any incident, leak or double end.
RUST_LOG="${RUST_LOG:-warn,wgpu_hal::gles::egl=off,sessionbus::supervisor=error}" \
  cargo run --quiet --locked --example demo -- --scenario expiry --sessions 300 --json | tail -n 1
echo "test.sh: demo shutdown scenario (a real SIGTERM mid-storm; leases forced, every buffer released within the deadline)"
# Leases outlive the deadline on purpose, so `session.drain_forced` WARN lines are expected.
RUST_LOG="${RUST_LOG:-warn,wgpu_hal::gles::egl=off,sessionbus::supervisor=error}" \
  cargo run --quiet --locked --example demo -- --scenario shutdown --sessions 300 --deadline-secs 2 --json | tail -n 1
