"""Credit: how much of the reward each token gets.

- `maths`: pure torch, tensors in and tensors out (group advantages, RLSD token weights, OPSD/OPD divergences,
  the contrastive target); SPEC.md gives the definitions.
- `records`: the per-token credit records a run writes to `credit.jsonl` (`CreditRecorder`) and their file
  format (`CREDIT_FILE`, `load_credit_records`), read by `rlsd inspect`.

`rlsd.credit.<function>` names the maths, as before the package existed.
"""

from .maths import (ADVANTAGE_EPS, MAX_LOG_WEIGHT, blended_token_advantages, contrastive_rlsd_token_advantages,
                    contrastive_target_logits, distillation_divergence, group_advantages, linear_decay_lambda,
                    masked_mean, rlcsd_token_advantages, rlsd_token_advantages, sampled_token_advantages,
                    scheduled_lambda, thought_span_mask)

__all__ = ["ADVANTAGE_EPS", "MAX_LOG_WEIGHT", "blended_token_advantages", "contrastive_rlsd_token_advantages",
           "contrastive_target_logits", "distillation_divergence", "group_advantages", "linear_decay_lambda",
           "masked_mean", "rlcsd_token_advantages", "rlsd_token_advantages", "sampled_token_advantages",
           "scheduled_lambda", "thought_span_mask"]
