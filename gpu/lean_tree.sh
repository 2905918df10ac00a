#!/usr/bin/env bash
# The working tree travels with every device call, 64 MiB at most with what the call carries (gpu/README.md),
# and the committed evaluation and training results alone are ~50 MB of it. No device job reads them: the jobs
# write under /tmp/hz and send results back through $OUT. So leave them out of the working tree while device
# calls run (a 44 MiB model chunk must fit beside the rest):
#   bash gpu/lean_tree.sh on     before the first device call: evaluate/results/, train/results/ leave the tree
#   bash gpu/lean_tree.sh off    after the last one, before unpacking: it comes back, unchanged
#   bash gpu/lean_tree.sh check  in the unpackers: exit 2 with a line saying to run `off` while the tree is lean
# (a sparse checkout: the files stay committed and in the index; only the working tree goes without them).
set -euo pipefail
case ${1:-} in
  on) git sparse-checkout set --no-cone '/*' '!/evaluate/results/' '!/train/results/' ;;
  off) git sparse-checkout disable ;;
  # for the unpackers: results written into a folder the sparse checkout left out would not show in git status
  check) [ "$(git config --get core.sparseCheckout)" != true ] \
           || { echo "${2:-this script}: the results folders are out of the working tree: run bash gpu/lean_tree.sh off first"; exit 2; }
         exit 0 ;;
  *) echo "usage: bash gpu/lean_tree.sh on|off|check"; exit 2 ;;
esac
# what travels: the tracked files left in the working tree ('S' marks those the sparse checkout left out)
bytes=$(git ls-files -t -z | tr '\0' '\n' | grep -v '^S ' | cut -c3- | tr '\n' '\0' | xargs -0 du -cb | tail -1 | cut -f1)
echo "gpu/lean_tree.sh $1: tracked files in the working tree: $((bytes / 1048576)) MiB of the 64 MiB a call carries"
