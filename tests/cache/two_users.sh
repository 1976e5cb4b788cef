#!/usr/bin/env bash
# The kernel cache shared between two users (issue 15, kind 2): a cache directory
# another user owns or can write is never used, whoever planted what in it; each
# user's own private cache works. Runs as root, with `nobody` as the other user
# (runuser); exits 77 (skipped) elsewhere.
#   usage: two_users.sh <attnforge CLI>
set -euo pipefail
cli_built=$1
[ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && command -v runuser >/dev/null ||
  { echo "needs root, a 'nobody' user and runuser: skipped"; exit 77; }

as_nobody() { runuser -u nobody -- env -i PATH=/usr/bin:/bin HOME=/nonexistent "$@"; }
# A base directory nobody can enter: /tmp is 0700 on some machines (a container's), where nobody could not reach
# its own directory below it.
base=""
for dir in "${TMPDIR:-/tmp}" /tmp /var/tmp /dev/shm; do
  if [ -d "$dir" ] && as_nobody test -x "$dir"; then base=$dir; break; fi
done
[ -n "$base" ] || { echo "FAILED: none of \$TMPDIR, /tmp, /var/tmp, /dev/shm lets nobody in"; exit 1; }
work=$(mktemp -d "$base/af-two-users-XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
cp "$cli_built" "$work/attnforge" && chmod 0755 "$work/attnforge"
cli="$work/attnforge"

failures=0
# expect <exit code> <text expected in the output> <command...>
expect() {
  local want=$1 text=$2; shift 2
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" != "$want" ] || [[ "$out" != *"$text"* ]]; then
    echo "FAILED: $* -> exit $rc (wanted $want, with '$text'):"; echo "$out" | sed 's/^/    /'
    failures=$((failures + 1))
  else
    echo "ok: $* -> exit $rc"
  fi
}
entry=$(printf 'e%.0s' {1..64}).afk  # 64 hex characters: named like an entry

# 1. nobody's directory, with an entry nobody planted: root refuses to use it at all.
planted="$work/planted-by-nobody"
mkdir -m 0755 "$planted" && chown nobody "$planted"
as_nobody sh -c "printf 'AFKCACH2 not a kernel' > '$planted/$entry'"
expect 1 "owned by uid 65534" env ATTNFORGE_CACHE_DIR="$planted" "$cli" cache list
expect 1 "owned by uid 65534" env ATTNFORGE_CACHE_DIR="$planted" "$cli" warmup --arch sm_80
expect 1 "owned by uid 65534" env ATTNFORGE_CACHE_DIR="$planted" "$cli" cache clear
expect 0 "not used: $planted is owned by uid 65534" env ATTNFORGE_CACHE_DIR="$planted" "$cli" info
[ "$(ls -A "$planted")" = "$entry" ] || { echo "FAILED: root wrote into or cleared nobody's directory"; failures=$((failures + 1)); }

# 2. root's directory, world-readable: nobody refuses it too (and cannot write it anyway).
shared="$work/root-cache"
mkdir -m 0755 "$shared"
expect 0 "empty" env ATTNFORGE_CACHE_DIR="$shared" "$cli" cache list
expect 1 "owned by uid 0" as_nobody ATTNFORGE_CACHE_DIR="$shared" "$cli" cache list
expect 1 "owned by uid 0" as_nobody ATTNFORGE_CACHE_DIR="$shared" "$cli" warmup --arch sm_80

# 3. A sticky world-writable directory (a shared /tmp-like place) is refused by both users.
sticky="$work/sticky"
mkdir -m 1777 "$sticky"
expect 1 "writable by group or others" env ATTNFORGE_CACHE_DIR="$sticky" "$cli" cache list
expect 1 "another user could replace the kernels" as_nobody ATTNFORGE_CACHE_DIR="$sticky" "$cli" cache list

# 4. Each user's own private cache is used: nobody's, created by nobody with mode 0700.
mkdir -m 0755 "$work/nobody-home" && chown nobody "$work/nobody-home"
expect 0 "empty" as_nobody ATTNFORGE_CACHE_DIR="$work/nobody-home/cache" "$cli" cache list
as_nobody mkdir -m 0700 "$work/nobody-home/cache"
as_nobody sh -c "printf 'damaged' > '$work/nobody-home/cache/$entry' && chmod 0600 '$work/nobody-home/cache/$entry'"
expect 0 "problem=damaged" as_nobody ATTNFORGE_CACHE_DIR="$work/nobody-home/cache" "$cli" cache list
expect 0 "cleared" as_nobody ATTNFORGE_CACHE_DIR="$work/nobody-home/cache" "$cli" cache clear
[ -z "$(ls -A "$work/nobody-home/cache")" ] || { echo "FAILED: nobody could not clear its own cache"; failures=$((failures + 1)); }

# 5. A private directory its owner cannot write: warmup fails instead of reporting a cache it did not fill.
as_nobody chmod 0500 "$work/nobody-home/cache"
expect 1 "cannot write in $work/nobody-home/cache" as_nobody ATTNFORGE_CACHE_DIR="$work/nobody-home/cache" "$cli" warmup --arch sm_80

echo "two-user cache test: $failures failure(s)"
[ "$failures" = 0 ]
