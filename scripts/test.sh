#!/usr/bin/env bash
# The whole test suite, on a fresh Debian/Ubuntu machine with Rust.
#
# 1. Makes sure a real wgpu adapter exists: Mesa's software Vulkan driver
#    (lavapipe, package mesa-vulkan-drivers) when there is no GPU. Installs it
#    with apt-get when it can (root, or passwordless sudo); otherwise says
#    exactly what to install and stops.
#    Likewise `redis-server` (package redis-server): the cluster tests start
#    their own on a free port.
# 2. Runs every test in the workspace with every feature (engine unit tests,
#    integration tests on real wgpu buffers and a real redis-server, the
#    chat_server and cluster examples' packages, the shared testkit, doctests
#    of the README). `--all-features` turns on what tests declare in
#    `required-features` (the `sessionbus` command's `cli`).
# 3. Checks formatting, lints (clippy, warnings denied), the docs (rustdoc,
#    warnings denied), and that the library builds with its default and its
#    smallest feature sets.
# 4. Runs the demo as an end-to-end check: it exits non-zero if any session
#    ended twice, any buffer leaked (by wgpu's own counters), or any error occurred.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have_lavapipe() { compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null; }
have_lavapipe || missing+=(mesa-vulkan-drivers)
command -v redis-server >/dev/null 2>&1 || [ -n "${REDIS_SERVER:-}" ] || missing+=(redis-server)

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
    echo "test.sh: no apt-get here. Install: ${missing[*]} (Mesa's Vulkan software driver, lavapipe, unless the machine has a GPU and its Vulkan driver; redis-server for the cluster tests)." >&2
    exit 1
  fi
fi

# Headless Chromium, for tests/demo/report_renders_in_a_browser.rs (the demo's
# HTML report is opened in it) and examples/chat_server/tests/chat_server/page_works_in_chromium.rs
# (the chat_server example's page chats in it). CHROMIUM may name another Chromium or Chrome.
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: missing system package: chromium"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "test.sh: cannot install it here. Run:  sudo apt-get install -y chromium  (or set CHROMIUM to a Chromium or Chrome binary)" >&2
    exit 1
  fi
fi

# Lavapipe warns on stderr when this is unset; give it a private directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
fi

# Each step says how long the run has taken so far (where a fresh machine's time goes).
step() { echo "test.sh: [${SECONDS}s] $*"; }

step "formatting (cargo fmt --check)"
cargo fmt --all --check
step "every test of the workspace, every feature on"
cargo test --workspace --all-features --locked
# `--workspace`, as above: the same features, so the same build (with `-p` the
# engine was compiled again with other features: a minute on a fresh machine).
step "the engine's tests again, sessions spread over 3 registry shards (the default is one per core)"
SESSIONBUS_TEST_SHARDS=3 cargo test --workspace --all-features --locked --test engine
step "the engine's tests again with passivation on: sessions idle for 10 ms park (the default is off)"
SESSIONBUS_TEST_PASSIVATE=10ms cargo test --workspace --all-features --locked --test engine
step "...and with both: 3 shards, sessions idle for 1 s park"
SESSIONBUS_TEST_SHARDS=3 SESSIONBUS_TEST_PASSIVATE=1s cargo test --workspace --all-features --locked --test engine
step "lints (clippy on every target and feature, warnings denied)"
cargo clippy --workspace --all-targets --all-features --locked --quiet -- -D warnings
step "docs (rustdoc warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked --quiet
step "the library alone, with its default and with its smallest feature set (no dev-dependency turns features on)"
cargo build --locked --quiet -p sessionbus
cargo build --locked --quiet -p sessionbus --no-default-features
if cargo tree --locked -p sessionbus --no-default-features -e normal | grep -q ' wgpu v'; then
  echo "test.sh: wgpu is compiled without the wgpu feature" >&2
  exit 1
fi
step "demo end-to-end check"
cargo run --quiet --locked --example demo -- --sessions 300 --turns 4 --json | tail -n 1
step "demo expiry scenario (idle timeouts, TTLs, leases, context resets; wgpu counters back at baseline)"
# Its remote workers die on purpose, so `lease.revoked` WARN lines are expected;
# the demo itself fails on any incident, leak or double end.
RUST_LOG="${RUST_LOG:-warn,wgpu_hal::gles::egl=off,sessionbus::supervisor=error}" \
  cargo run --quiet --locked --example demo -- --scenario expiry --sessions 300 --json | tail -n 1
step "demo storm scenario (2 000 disconnects at 20 000 buffers/s next to live chat; no errors, wgpu counters back at baseline)"
cargo run --quiet --locked --example demo -- --scenario storm --storm-size 2000 --release-rate 20000 --json | tail -n 1
step "demo with the audit trail (a fresh random key), then the trail verifies, and a changed copy does not"
audit_dir="$(mktemp -d)"
SESSIONBUS_AUDIT_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
export SESSIONBUS_AUDIT_KEY
cargo run --quiet --locked --example demo -- --sessions 300 --turns 4 --audit-dir "$audit_dir" --json | tail -n 1
cargo run --quiet --locked --example audit_verify -- "$audit_dir"
first_file="$(ls "$audit_dir"/audit-*.jsonl | head -n 1)"
sed -i '3s/"action":"/"action":"x/' "$first_file"
if cargo run --quiet --locked --example audit_verify -- "$audit_dir"; then
  echo "test.sh: audit_verify accepted a changed record" >&2
  exit 1
fi
rm -rf "$audit_dir"
unset SESSIONBUS_AUDIT_KEY
step "demo kv scenario (a shared system prompt in paged KV blocks, the paged-attention kernel against the CPU, every kind of end; no block held by an ended session, wgpu counters back at baseline)"
RUST_LOG="${RUST_LOG:-warn,wgpu_hal::gles::egl=off,sessionbus::supervisor=error}" \
  cargo run --quiet --locked --example demo -- --scenario kv --sessions 200 --json | tail -n 1
# The binary the tests built (every feature on): `cargo run -p` would build the
# example and the library once more with its own features (two minutes fresh).
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)"
step "cluster example (3 nodes on a throwaway redis-server; one killed with SIGKILL)"
RUST_LOG="${RUST_LOG:-warn,wgpu_hal::gles::egl=off,sessionbus::cluster=error}" \
  "$target_dir/debug/cluster" --sessions 50
step "demo shutdown scenario (a real SIGTERM mid-storm; leases forced, every buffer released within the deadline)"
# Leases outlive the deadline on purpose, so `session.drain_forced` WARN lines are expected.
RUST_LOG="${RUST_LOG:-warn,wgpu_hal::gles::egl=off,sessionbus::supervisor=error}" \
  cargo run --quiet --locked --example demo -- --scenario shutdown --sessions 300 --deadline-secs 2 --json | tail -n 1
step "done: every step passed"
