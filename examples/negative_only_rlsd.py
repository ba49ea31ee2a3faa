"""RLSD with teacher weights on wrong rollouts only: a new method in one file (docs/new-method.md).

Idea (from the RLSD authors' `rlsd_negative_only` and ms-swift's `rlsd_negative_only`): a correct rollout keeps
GRPO's uniform credit `A`; only a wrong one (A < 0) has its blame shared out by the informed teacher,
`A_t = A * ((1 - lambda) + lambda * w_t)`. The teacher only needs to score the wrong rollouts.

Use it like a built-in:
    rlsd train --config configs/quickstart.yaml --set algorithm=examples/negative_only_rlsd.py:NegativeOnlyRLSD
    rlsd compare --config configs/quickstart.yaml --algorithms rlsd,grpo,examples/negative_only_rlsd.py:NegativeOnlyRLSD
(The built-in `rlsd` gives the same numbers with `rlsd_negative_only: true`; this file shows how little a method
needs.)
"""

import torch

from rlsd.credit import maths as credit
from rlsd.algorithms import RLSD


class NegativeOnlyRLSD(RLSD):
    name = "negative_only_rlsd"  # its name in run directories, reports and `rlsd compare`

    def rows_to_score(self, teacher, output):
        """The teacher scores wrong rollouts only: elsewhere its numbers are never used."""
        return output["advantages"] < 0

    def token_advantages(self, teacher, inputs, old_logps):
        """(B, T) token advantages: RLSD's on rows with A < 0, GRPO's A on every other row."""
        advantages, mask = inputs["sequence_advantages"], self.mask(inputs)
        wrong = (advantages < 0).unsqueeze(1).expand_as(mask)  # where the teacher's weight applies
        lam = self.current_lambda(teacher)
        token_adv, stats = credit.rlsd_token_advantages(
            advantages, inputs["teacher_per_token_logps"], self.baseline_logps(inputs, old_logps), mask,
            lam=lam, eps_w=self.args.rlsd_eps_w, active=wrong)
        teacher.log_value("negative_only/wrong_rows_frac", (advantages < 0).float().mean().item())
        teacher.log_value("rlsd/weight_mean", stats["weight_mean"].item())
        teacher.record_credit(inputs, {"token_advantage": token_adv}, color="token_advantage")
        return token_adv


if __name__ == "__main__":  # a quick look at the rule on made-up numbers
    adv = torch.tensor([1.0, -1.0])
    q, s = torch.tensor([[0.0, -2.0], [0.0, -2.0]]), torch.zeros(2, 2)
    out, _ = credit.rlsd_token_advantages(adv, q, s, torch.ones(2, 2), active=(adv < 0).unsqueeze(1).expand(2, 2))
    print(out)  # row 0 (correct): [1, 1]; row 1 (wrong): blame grows where the teacher dislikes the token
