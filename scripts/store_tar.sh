#!/usr/bin/env bash
# Pack a results store into one tarball, or unpack one, so that a sweep longer than one machine's lease resumes on
# the next machine from what the last one finished (as on preemptible cloud jobs).
#
#   scripts/store_tar.sh pack STORE TARBALL [--with-checkpoints]
#   scripts/store_tar.sh unpack TARBALL STORE
#
# pack leaves out what only the process that wrote it could use: leases (*.lock) and temporary files; mid-training
# checkpoints (*.ckpt.safetensors) too unless --with-checkpoints (they hold a model and its optimizer state: tens of MB each
# for small models). A cell whose checkpoint is left out starts again from step 0. unpack merges into STORE: cells
# already there are kept, and a finished cell is never overwritten.
set -euo pipefail
usage() { echo "usage: $0 pack STORE TARBALL [--with-checkpoints] | unpack TARBALL STORE" >&2; exit 2; }
[ $# -ge 3 ] || usage
case "$1" in
  pack)
    store=$2 tarball=$3
    [ -d "$store/cells" ] || { echo "error: no results store at $store (no cells/ folder)" >&2; exit 2; }
    excludes=(--exclude='*.lock' --exclude='*.tmp')
    [ "${4:-}" = "--with-checkpoints" ] || excludes+=(--exclude='*.ckpt' --exclude='*.ckpt.safetensors')
    mkdir -p "$(dirname "$tarball")"
    tar czf "$tarball.part" "${excludes[@]}" -C "$store" .
    mv "$tarball.part" "$tarball"  # all or nothing: a cut-off pack leaves no tarball that looks whole
    echo "packed $(find "$store/cells" -name '*.jsonl' | wc -l) finished cell(s) of $store into $tarball ($(du -h "$tarball" | cut -f1))"
    ;;
  unpack)
    tarball=$2 store=$3
    [ -f "$tarball" ] || { echo "error: no tarball at $tarball" >&2; exit 2; }
    mkdir -p "$store"
    # --skip-old-files: what the store already holds wins (a finished cell is written once, never replaced)
    tar xzf "$tarball" --skip-old-files -C "$store"
    echo "unpacked $tarball into $store: $(find "$store/cells" -name '*.jsonl' | wc -l) finished cell(s)"
    ;;
  *) usage ;;
esac
