#!/usr/bin/env bash
# The mutants issue 16 found surviving the suite, applied one at a time: each must make its tests fail.
# Prints "killed" or "SURVIVED" per mutant and restores every file; exit status 1 if any survived.
#   tools/mutation/known_mutants.sh        (needs .venv: run tools/test once first)
set -uo pipefail
backup=$(mktemp); log=$(mktemp)
mutated=""  # the file that holds a mutant right now: restored even if the run is interrupted
trap '[[ -n "$mutated" ]] && cp "$backup" "$mutated"; rm -f "$backup" "$log"' EXIT
survivors=0
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
run() {
  local file=$1 old=$2 new=$3 tests=$4
  cp "$file" "$backup"
  mutated=$file
  python3 - "$file" "$old" "$new" <<'PY'
import sys
p,old,new=sys.argv[1:4]
s=open(p).read()
assert s.count(old)==1, (p, old, s.count(old))
open(p,'w').write(s.replace(old,new))
PY
  if nice -n 15 .venv/bin/pytest -q -x -p no:cacheprovider $tests >"$log" 2>&1; then
    echo "SURVIVED: $file :: $new"
    survivors=$((survivors + 1))
  else
    echo "killed:   $file :: $(grep -m1 -o 'FAILED [^ ]*' "$log")"
  fi
  cp "$backup" "$file"
  mutated=""
}
run recyclex_edge/decision.py "return cls(classifier.labels, threshold, config.class_thresholds)" "return cls(classifier.labels, threshold, {})" "tests/test_api_predict_image.py tests/test_decision.py"
run recyclex_edge/outbox.py '"DELETE FROM events WHERE seq = ? RETURNING size_bytes", (seq,)' '"DELETE FROM events WHERE seq <= ? RETURNING size_bytes", (seq,)' "tests/mqtt/test_outbox.py"
run recyclex_edge/api/ratelimit.py "self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate_per_s)" "self.tokens = self.tokens + (now - self._updated) * self.rate_per_s" "tests/test_api_ratelimit.py"
run recyclex_edge/api/auth.py '"verify_aud": self._jwt.audience is not None' '"verify_aud": False' "tests/test_api_auth.py"
run recyclex_edge/sorter.py "if relay is not None and interrupted is None:" "if relay is not None:" "tests/hardware/test_sorter.py"
run recyclex_edge/sorter.py "        self._relays_off()
        if self._servo is None:
            self._needs_home = False" "        if self._servo is None:
            self._needs_home = False" "tests/hardware/test_sorter.py"
exit $((survivors > 0))
