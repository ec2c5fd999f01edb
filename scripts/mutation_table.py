"""The mutation table of `fn.gradcheck.check`: per layer and loss, bugs planted, caught, equivalent,
missed, and false alarms over correct models checked at many seeds.

    .venv/bin/python scripts/mutation_table.py [--seeds 20] [--only NAME] [--rows 0:40]
                                               [--markdown]

Every mutant of tests/gradcheck_mutants.py (the families and the equivalence rule are described
there) is checked at `check`'s defaults; then every configuration, unmutated, is checked at
`--seeds` seeds (parameters, data, keys and the checker's own draws all change with the seed).
Columns: planted; caught; equivalent (equal to the true gradient at every check and witness
point, so nothing to catch); hidden (not caught, different only at a witness point); missed (not
caught although different at a check point: a checker bug); false alarms (a failed check of an
equivalent mutant or of an unmutated model) and the number of unmutated checks. Exits with
status 1 when anything is hidden, missed or a false alarm.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import gradcheck_mutants as M  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20,
                        help="unmutated checks per configuration (default 20)")
    parser.add_argument("--only", default=None, help="only the rows whose name contains this")
    parser.add_argument("--rows", default=":", help="a slice START:STOP of the rows (to split "
                        "the table over several processes)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    rows = [(case.name, M.layer_outcomes, M.layer_problem, case) for case in M.LAYERS]
    rows += [(case.name, M.loss_outcomes, M.loss_problem, case) for case in M.LOSSES]
    start, stop = (int(v) if v else None for v in args.rows.split(":"))
    rows = [row for row in rows[start:stop] if args.only is None or args.only in row[0]]
    start, table, bad = time.perf_counter(), [], []
    for name, outcomes_of, problem_of, case in rows:
        outcomes = outcomes_of(case)
        failures = M.unmutated_failures(lambda seed: problem_of(case, seed), range(args.seeds))
        counts = Counter(o.verdict for o in outcomes)
        table.append((name, len(outcomes), counts["caught"], counts["equivalent"],
                      counts["hidden"], counts["MISSED"],
                      counts["false alarm"] + len(failures), args.seeds))
        bad += [f"{o.table}: {o.mutant}: {o.verdict}" for o in outcomes
                if o.verdict not in ("caught", "equivalent")]
        bad += [f"{name}: unmutated model fails at seed {seed}" for seed in failures]
        print(f"{name}: {table[-1][1:]} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    totals = ("total",) + tuple(sum(row[i] for row in table) for i in range(1, 8))
    print_table(table + [totals], args.markdown)
    print(f"\n{totals[1]} mutants planted, {totals[2]} caught, {totals[3]} equivalent, "
          f"{totals[4]} hidden, {totals[5]} missed; {totals[6]} false alarms in "
          f"{totals[7]} unmutated checks and the equivalent mutants "
          f"({time.perf_counter() - start:.0f} s)")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


def print_table(table, markdown):
    header = ("layer / loss", "planted", "caught", "equivalent", "hidden", "missed",
              "false alarms", "unmutated checks")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table:
            print("| " + " | ".join(str(v) for v in row) + " |")
        return
    print(f"{header[0]:<38}" + "".join(f"{h:>13}" for h in header[1:]))
    for row in table:
        print(f"{row[0]:<38}" + "".join(f"{v:>13}" for v in row[1:]))


if __name__ == "__main__":
    sys.exit(main())
