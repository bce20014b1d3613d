# Sourced by the scripts: one target directory for every build (run, test, CI), kept outside
# the clone so a fresh clone reuses the RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/joch-target}"
export JOCH_BIN="$CARGO_TARGET_DIR/debug/joch"
