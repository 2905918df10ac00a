#!/usr/bin/env bash
# Move a trace collection between the device machine and this one, in pieces that fit a device call
# (a call returns at most 8 files / 64 MiB and carries at most 64 MiB), so that collecting and training can
# take separate holds and collections made in several holds can be trained on together.
#
# On the device machine (from the repo root):
#   bash gpu/traces.sh send /tmp/traces/campaign_q15     # packs once; each call puts the next pieces in $OUT
#   bash gpu/traces.sh receive campaign_q15              # takes the carried pieces; with all of them,
#                                                        # checks the sha256 and unpacks into /tmp/traces/
# Here:
#   bash gpu/traces.sh gather /work/.device/<n> ...      # the returned pieces -> .stage/traces/
#   bash gpu/traces.sh extract campaign_q15 [dest]       # assemble and unpack here (default .traces/)
# Carrying a collection back up: one device call per PER_CALL pieces, back to back,
#   run(command="bash gpu/traces.sh receive <name>", carry=[".stage/traces/<name>.tar.part000", ...])
# with <name>.sha256 carried in the first call. Pieces are PIECE bytes (15 MiB; 4 per call).
set -euo pipefail
PIECE=${PIECE:-15m}
PER_CALL=${PER_CALL:-4}
PACK=${PACK_DIR:-/tmp/pack}
ROOT=${TRACES_ROOT:-/tmp/traces}
PARTS=${TPARTS:-/tmp/tparts}
STAGE=${STAGE_DIR:-.stage/traces}
die() { echo "gpu/traces.sh: $*" >&2; exit 2; }

assemble() {  # assemble NAME FROM DEST: check the pieces in FROM against NAME.sha256, unpack into DEST
  local name=$1 from=$2 dest=$3 want got
  [ -f "$from/$name.sha256" ] || die "no $name.sha256 in $from (it comes with the first pieces)"
  want=$(awk '/^parts /{print $2}' "$from/$name.sha256")
  got=$(compgen -G "$from/$name.tar.part*" | wc -l || true)
  if [ "$got" -lt "$want" ]; then echo "$name: $got of $want pieces here; carry the rest"; return 1; fi
  cat "$from/$name".tar.part* > "$from/$name.tar"
  (cd "$from" && head -1 "$name.sha256" | sha256sum -c --quiet -) \
    || { rm -f "$from/$name.tar"; die "$name.tar does not match its sha256: a piece is missing or broken"; }
  mkdir -p "$dest"
  rm -rf "${dest:?}/$name"
  tar xf "$from/$name.tar" -C "$dest"
  rm -f "$from/$name.tar"
  echo "$name: $want pieces checked, unpacked into $dest/$name"
}

case "${1:-}" in
  send)
    src=${2:?usage: send DIR}; [ -d "$src" ] || die "$src is not a folder"
    name=$(basename "$src"); out=${OUT:?send runs on the device machine, where \$OUT is set}
    mkdir -p "$PACK"
    if [ ! -f "$PACK/$name.sha256" ]; then  # pack once; the pieces then go out PER_CALL at a time
      tar cf "$PACK/$name.tar" --exclude='*.tmp' -C "$(dirname "$src")" "$name"
      (cd "$PACK" && sha256sum "$name.tar") > "$PACK/$name.sha256.tmp"
      rm -f "$PACK/$name".tar.part*  # of a packing that was killed
      split -b "$PIECE" -d -a 3 "$PACK/$name.tar" "$PACK/$name.tar.part"
      rm "$PACK/$name.tar"
      echo "parts $(compgen -G "$PACK/$name.tar.part*" | wc -l)" >> "$PACK/$name.sha256.tmp"
      mv "$PACK/$name.sha256.tmp" "$PACK/$name.sha256"
      : > "$PACK/$name.sent"
    fi
    cp "$PACK/$name.sha256" "$out/"
    n=0
    for p in "$PACK/$name".tar.part*; do
      grep -qxF "$(basename "$p")" "$PACK/$name.sent" && continue
      [ "$n" -ge "$PER_CALL" ] && break
      cp "$p" "$out/" && basename "$p" >> "$PACK/$name.sent"
      n=$((n + 1))
    done
    total=$(awk '/^parts /{print $2}' "$PACK/$name.sha256")
    left=$((total - $(wc -l < "$PACK/$name.sent")))
    echo "$name: $n pieces in \$OUT, $left of $total left$([ "$left" -gt 0 ] && echo ' (call send again)')"
    ;;
  receive)
    name=${2:?usage: receive NAME}
    mkdir -p "$PARTS"
    mv "$STAGE/$name".tar.part* "$STAGE/$name.sha256" "$PARTS/" 2>/dev/null || true
    assemble "$name" "$PARTS" "$ROOT" || true
    ;;
  gather)
    shift; [ $# -gt 0 ] || die "usage: gather FOLDER... (the device calls' returned files)"
    mkdir -p "$STAGE"
    for d in "$@"; do
      for f in "$d"/*.tar.part* "$d"/*.sha256; do [ -e "$f" ] && cp "$f" "$STAGE/"; done
    done
    for s in "$STAGE"/*.sha256; do
      [ -e "$s" ] || continue
      name=$(basename "$s" .sha256)
      echo "$name: $(compgen -G "$STAGE/$name.tar.part*" | wc -l) of $(awk '/^parts /{print $2}' "$s") pieces in $STAGE"
    done
    ;;
  extract)
    name=${2:?usage: extract NAME [DEST]}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp "$STAGE/$name".tar.part* "$STAGE/$name.sha256" "$tmp/" 2>/dev/null || die "no pieces of $name in $STAGE"
    assemble "$name" "$tmp" "${3:-.traces}"
    ;;
  *) die "usage: send DIR | receive NAME | gather FOLDER... | extract NAME [DEST]" ;;
esac
