#!/bin/sh
# A local test of the handler, without the platform: `sh test.sh`.
set -eu
cd "$(dirname "$0")"
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$(sh ./handler < event.json)
case "$out" in
  *'"message": "hello, Ada!"'*) ;;
  *) fail "event.json gave: $out" ;;
esac
out=$(echo '{}' | sh ./handler 2>/dev/null)
case "$out" in
  *'"message": "hello, world!"'*) ;;
  *) fail "{} gave: $out" ;;
esac
echo ok
