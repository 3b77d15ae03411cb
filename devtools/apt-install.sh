#!/usr/bin/env bash
# devtools/apt-install.sh PACKAGE...: Debian packages installed quietly (apt's chatter,
# such as debconf's note that apt-utils is missing, is nothing a user can act on); when the
# install fails, what apt said last goes to stderr and the exit status is apt's.
set -euo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1 || status=$?
if [ "$status" != 0 ]; then
  echo "apt-get could not install $*; what it said last:" >&2
  tail -n 20 "$log" >&2
fi
exit "$status"
