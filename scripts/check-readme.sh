#!/usr/bin/env bash
# Runs every shell block of README.md's "Quick start" and "CLI reference" sections, in
# order, in one shell with `set -euo pipefail`, from the repository's root, as a new user
# would paste them: a README example that does not run fails this (and CI). It stops what
# the blocks left running (their background jobs, the quick start's PostgreSQL) at the
# end, and prints a closing line that counts the blocks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
script=$(mktemp "${TMPDIR:-/tmp}/heirloom-readme.XXXXXX.sh")
python3 - README.md "$script" <<'PY'
import re, sys
readme, out = sys.argv[1], sys.argv[2]
text = open(readme, encoding="utf-8").read()
sections, current = [], None
for line in text.splitlines(keepends=True):
    if line.startswith("## "):
        current = line[3:].strip()
    sections.append((current, line))
blocks, block, inside = [], [], False
for section, line in sections:
    if section not in ("Quick start", "CLI reference"):
        continue
    if line.startswith("```sh") and not inside:
        inside, block = True, []
    elif line.startswith("```") and inside:
        inside = False
        blocks.append("".join(block))
    elif inside:
        block.append(line)
with open(out, "w", encoding="utf-8") as f:
    f.write("set -euo pipefail\n")
    f.write("stop() { kill $(jobs -p) 2>/dev/null || true; wait || true; "
            "[ -d \"$HEIRLOOM_README_ROOT/quickstart/pg\" ] && "
            "\"$HEIRLOOM_README_ROOT/scripts/postgres.sh\" stop \"$HEIRLOOM_README_ROOT/quickstart/pg\" || true; }\n")
    f.write("trap stop EXIT\n")
    for number, body in enumerate(blocks, 1):
        f.write(f"echo '== README block {number} of {len(blocks)}' >&2\n{body}")
    f.write(f"echo 'readme: {len(blocks)} blocks ran' >&2\n")
print(len(blocks))
PY
export HEIRLOOM_README_ROOT=$PWD
if bash "$script"; then
  echo "readme: every block ran"
else
  status=$?
  echo "readme: a block failed (exit $status; the output above shows which)" >&2
  [ -f quickstart/coordinator.log ] && tail -20 quickstart/coordinator.log >&2
  [ -f quickstart/worker.log ] && tail -20 quickstart/worker.log >&2
  exit "$status"
fi
