"""Agent quickstart's warm start (`shop`): held-out accuracy with and without the reference in the prompt.

RLSD's self-teacher reads the reference; it can only give useful token credit where it beats the student.
This runs the quickstart's agent warm start (`rlsd.app.quickstart.AGENT_WARM_START`, deterministic, one thread)
past the band and prints, at every evaluation, plain accuracy (the student) and accuracy with the reference
(the self-teacher's view), on the same 50 held-out episodes.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/shop_reference_probe.py --budget-s 950 --eval-every 50
"""

from __future__ import annotations

import argparse
import time

import rlsd.app.evaluate as evaluation
from rlsd.app.quickstart import AGENT_THREADS, AGENT_WARM_START, PRIVILEGED_FIELDS, WARM_START_PRIVILEGED_FRACTION
from rlsd.app.warmstart import warm_start
from rlsd.teacher.prompts import with_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=950.0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--output-dir", default="/tmp/shop-reference-probe")
    args = parser.parse_args()

    plain_evaluate = evaluation.evaluate
    started = time.perf_counter()

    def both_views(model, tokenizer, rows, reward, **kwargs):
        plain = plain_evaluate(model, tokenizer, rows, reward, **kwargs)
        reference = plain_evaluate(model, tokenizer, with_reference(rows, PRIVILEGED_FIELDS), reward, **kwargs)
        print(f"plain {plain['accuracy']:.2f} | with reference {reference['accuracy']:.2f} | "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        return plain

    evaluation.evaluate = both_views  # the warm start's band-stop evaluation imports it at call time
    settings = dict(AGENT_WARM_START, target_accuracy=(0.99, 1.0), eval_every=args.eval_every)
    result = warm_start("shop", args.output_dir, seed=0, num_eval_rows=50, time_budget_s=args.budget_s,
                        privileged_fraction=WARM_START_PRIVILEGED_FRACTION, num_threads=AGENT_THREADS,
                        deterministic=True, force=True, progress=False, **settings)
    for entry in result.history:
        print(f"step {entry['step']}: plain {entry['accuracy']:.2f} ({entry['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
