#!/bin/sh
# An example executable service: prints its arguments, one per line, and whether
# the API_TOKEN secret reached it (its length, never the value).
set -eu
echo "report.sh ran with $# arguments:"
for a in "$@"; do
  echo "  [$a]"
done
if [ -n "${API_TOKEN:-}" ]; then
  echo "API_TOKEN is set (${#API_TOKEN} characters)"
else
  echo "API_TOKEN is not set"
fi
