#!/usr/bin/env bash
# Checks a built libattnforge.so (and the attnforge command): the dynamic symbol
# table exports only af_* functions, and DT_NEEDED names glibc's libraries alone.
# Usage: check_exports.sh LIBRARY COMMAND
set -euo pipefail
trap 'echo "FAIL: check_exports.sh line $LINENO: $BASH_COMMAND (exit $?)"' ERR
library=$1 command=$2
status=0

exported=$(nm -D --defined-only "$library" | awk '{print $3}' | sort)
stray=$(grep -v '^af_' <<<"$exported" || true)
if [ -n "$stray" ]; then
  echo "FAIL: $library exports symbols outside af_*:"; sed -n 1,20p <<<"$stray"; status=1
fi
count=$(grep -c '^af_' <<<"$exported" || true)
[ "$count" -ge 10 ] || { echo "FAIL: only $count af_* symbols exported"; status=1; }

allowed='^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|ld-linux-x86-64\.so\.2)$'
for file in "$library" "$command"; do
  needed=$(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  [ -n "$needed" ] || { echo "FAIL: no DT_NEEDED read from $file"; status=1; }
  bad=$(grep -Ev "$allowed" <<<"$needed" || true)
  if [ -n "$bad" ]; then echo "FAIL: $file needs non-glibc libraries: $bad"; status=1; fi
done
[ $status -eq 0 ] && echo "ok: $count af_* exports; NEEDED glibc only"
exit $status
