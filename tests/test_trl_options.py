"""Documented GRPOConfig options under every algorithm that accepts them: 2 real training steps each on the tiny
local model, a finite loss, and the option's own effect visible; combinations that cannot work are refused when
the config is built (README "TRL options" lists them with the reason).

Sizes are the smallest that still show each effect (1 prompt x 4 generations, 8 completion tokens), so the matrix
runs in a few minutes on 2 CPU cores.
"""

import math

import pytest
import torch
from conftest import digit_reward, make_dataset, tiny_config
from transformers import TrainerCallback

from rlsd import RLSDConfig, RLSDTrainer
from trainer_helpers import loss_and_grads  # noqa: E402

SMALL = dict(max_completion_length=8, max_steps=2)
TEACHER_ALGORITHMS = ["opsd", "grpo+opsd", "sdpo"]  # beside grpo and rlsd; opd has its own cases below


def length_reward(prompts, completions, **kwargs):
    """A second reward: share of spaces (dense, and unlike digit_reward)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [t.count(" ") / max(len(t), 1) for t in texts]


class Generations:
    """Counts rollouts and keeps each generation batch (wraps the trainer's `_generate_and_score_completions`)."""

    def __init__(self, trainer):
        self.inner, self.batches, self.inputs = trainer._generate_and_score_completions, [], []
        trainer._generate_and_score_completions = self

    def __call__(self, inputs):
        output = self.inner(inputs)
        self.inputs.append(inputs)
        self.batches.append(output)
        return output


def build(model_dir, tmp_path, algorithm, reward_funcs=digit_reward, teacher_dir=None, **options):
    extra = {"teacher_model": teacher_dir} if algorithm == "opd" else {}
    args = tiny_config(tmp_path, algorithm=algorithm, **{**SMALL, **extra, **options})
    trainer = RLSDTrainer(model=model_dir, reward_funcs=reward_funcs, args=args, train_dataset=make_dataset(8))
    return trainer, Generations(trainer)


def train_logs(trainer):
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(logs) == 2
    assert all(math.isfinite(entry["loss"]) for entry in logs), logs
    return logs


def one_batch(trainer, generations):
    """One generation batch (with its teacher pass) for the trainer's first prompt, as the loss receives it."""
    rows = [dict(trainer.train_dataset[0]) for _ in range(trainer.num_generations)]
    trainer.model.eval()
    torch.manual_seed(0)
    return generations(rows)


def differs(a, b):
    return any(not torch.allclose(a[n], b[n], atol=1e-9, rtol=0) for n in a)


# ---- beta > 0: a reference model and its KL term ----------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", "grpo+opsd", "sdpo", "opsd"])
def test_beta_builds_a_reference_model_and_logs_kl(tiny_model_dir, tmp_path, algorithm):
    # sdpo blends GRPO's loss in at sdpo_lambda > 0; opsd puts its teacher signal into TRL's loss when sampled_token
    extra = {"sdpo": {"sdpo_lambda": 0.5}, "opsd": {"distill_divergence": "sampled_token"}}.get(algorithm, {})
    trainer, _ = build(tiny_model_dir, tmp_path, algorithm, beta=0.1, **extra)
    assert trainer.ref_model is not None
    logs = train_logs(trainer)
    assert all(math.isfinite(entry["kl"]) for entry in logs)


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
def test_sync_ref_model_copies_the_policy_into_the_reference(tiny_model_dir, tmp_path, algorithm):
    trainer, _ = build(tiny_model_dir, tmp_path, algorithm, beta=0.1, sync_ref_model=True, ref_model_sync_steps=1,
                       ref_model_mixup_alpha=1.0)
    train_logs(trainer)
    policy = dict(trainer.model.named_parameters())
    assert all(torch.equal(p, policy[n]) for n, p in trainer.ref_model.named_parameters())


# ---- one generation, several optimizer steps ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", *TEACHER_ALGORITHMS])
@pytest.mark.parametrize("option", ["num_iterations", "steps_per_generation"])
def test_one_generation_feeds_two_steps(tiny_model_dir, tmp_path, algorithm, option):
    trainer, generations = build(tiny_model_dir, tmp_path, algorithm, **{option: 2})
    train_logs(trainer)
    assert len(generations.batches) == 1, "two optimizer steps from one rollout"
    rows = generations.batches[0]["completion_ids"].size(0)
    assert rows == (8 if option == "steps_per_generation" else 4)  # the generation batch covers both steps
    if algorithm == "rlsd":  # off-policy steps: s_old comes from the rollout, not the current forward
        assert generations.batches[0].get("old_per_token_logps") is not None


# ---- rewards --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", *TEACHER_ALGORITHMS])
def test_several_reward_functions_with_weights(tiny_model_dir, tmp_path, algorithm):
    trainer, _ = build(tiny_model_dir, tmp_path, algorithm, reward_funcs=[digit_reward, length_reward],
                       reward_weights=[1.0, 0.5])
    for entry in train_logs(trainer):
        combined = entry["rewards/digit_reward/mean"] + 0.5 * entry["rewards/length_reward/mean"]
        assert entry["reward"] == pytest.approx(combined, abs=1e-6)


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
def test_normalize_then_sum_aggregation(tiny_model_dir, tmp_path, algorithm):
    trainer, generations = build(tiny_model_dir, tmp_path, algorithm, reward_funcs=[digit_reward, length_reward],
                                 reward_weights=[1.0, 0.5], multi_objective_aggregation="normalize_then_sum")
    train_logs(trainer)
    for output in generations.batches:  # each reward normalized per group, then the weighted sum over the batch
        advantages = output["advantages"].cpu()
        assert abs(advantages.mean()) < 1e-5 and (advantages.std() == 0 or abs(advantages.std() - 1) < 1e-2)


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards(tiny_model_dir, tmp_path, algorithm, scale):
    trainer, generations = build(tiny_model_dir, tmp_path, algorithm, scale_rewards=scale,
                                 per_device_train_batch_size=8, num_generations=4)
    train_logs(trainer)
    for inputs, output in zip(generations.inputs, generations.batches):
        texts = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
        rewards = torch.tensor(digit_reward(None, [[{"content": t}] for t in texts]))
        groups = rewards.view(-1, 4)
        centred = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
        std = {"group": groups.std(dim=1).repeat_interleave(4), "batch": rewards.std().expand(8),
               "none": torch.ones(8) - 1e-4}[scale]
        expected = centred / (std + 1e-4)
        assert torch.allclose(output["advantages"].cpu(), expected, atol=1e-4), (scale, output["advantages"])


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", *TEACHER_ALGORITHMS])
def test_mask_truncated_completions(tiny_model_dir, tmp_path, algorithm):
    trainer, generations = build(tiny_model_dir, tmp_path, algorithm, mask_truncated_completions=True)
    logs = train_logs(trainer)
    eos, truncated = trainer.processing_class.eos_token_id, 0
    for output in generations.batches:  # a random tiny model rarely stops within 8 tokens
        for ids, mask in zip(output["completion_ids"], output["completion_mask"]):
            if eos not in ids.tolist():
                assert mask.sum() == 0, "a truncated completion takes no part in the loss"
                truncated += 1
            else:
                assert mask.sum() > 0
    assert truncated > 0
    for entry in logs:
        if entry["completions/clipped_ratio"] == 1.0:
            assert entry["loss"] == 0.0


# ---- the surrogate loss: every loss_type takes RLSD's token advantages ---------------------------------------------
LOSS_TYPES = [("grpo", "token"), ("bnpo", "token"), ("dr_grpo", "token"), ("dapo", "token"), ("cispo", "token"),
              ("sapo", "token"), ("vespo", "token"), ("luspo", "sequence"), ("grpo", "sequence")]


@pytest.mark.parametrize("loss_type,level", LOSS_TYPES)
def test_every_loss_type_trains_and_takes_rlsd_token_advantages(tiny_model_dir, tmp_path, loss_type, level):
    for algorithm in ("grpo", "rlsd"):
        trainer, _ = build(tiny_model_dir, tmp_path / algorithm, algorithm, loss_type=loss_type,
                           importance_sampling_level=level)
        train_logs(trainer)
    # The same batch, RLSD at lambda = 1 vs lambda = 0 (= GRPO): the token advantages change the gradient.
    trainer, generations = build(tiny_model_dir, tmp_path / "same", "rlsd", loss_type=loss_type,
                                 importance_sampling_level=level)
    batch = one_batch(trainer, generations)
    assert batch["advantages"].abs().sum() > 0, "the batch has a learning signal"
    _, with_teacher = loss_and_grads(trainer, batch)
    trainer.args.rlsd_lambda = 0.0
    _, without = loss_and_grads(trainer, batch)
    assert differs(with_teacher, without), f"loss_type={loss_type!r} ignores RLSD's token advantages"


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
def test_top_entropy_quantile_masks_low_entropy_tokens(tiny_model_dir, tmp_path, algorithm):
    trainer, generations = build(tiny_model_dir, tmp_path, algorithm, top_entropy_quantile=0.2)
    train_logs(trainer)
    batch = one_batch(trainer, generations)
    _, masked = loss_and_grads(trainer, batch)
    trainer.top_entropy_quantile = 1.0
    _, full = loss_and_grads(trainer, batch)
    assert differs(masked, full), "only the top 20% entropy tokens carry the gradient"


def test_sequence_importance_sampling_changes_rlsd_gradient(tiny_model_dir, tmp_path):
    trainer, generations = build(tiny_model_dir, tmp_path, "rlsd", importance_sampling_level="sequence")
    batch = one_batch(trainer, generations)
    _, sequence = loss_and_grads(trainer, batch)
    trainer.importance_sampling_level = "token"
    _, token = loss_and_grads(trainer, batch)
    assert differs(sequence, token), "one ratio per sequence weighs RLSD's token advantages differently"


# ---- callbacks ------------------------------------------------------------------------------------------------------
class Recorder(TrainerCallback):
    def __init__(self):
        self.steps, self.logs = [], []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", *TEACHER_ALGORITHMS])
def test_user_callbacks_see_every_step_and_the_algorithms_metrics(tiny_model_dir, tmp_path, algorithm):
    recorder = Recorder()
    args = tiny_config(tmp_path, algorithm=algorithm, **SMALL)
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=digit_reward, args=args, train_dataset=make_dataset(8),
                          callbacks=[recorder])
    train_logs(trainer)
    assert recorder.steps == [1, 2]
    logged = {k for entry in recorder.logs for k in entry}
    assert "loss" in logged and (algorithm != "rlsd" or "rlsd/weight_mean" in logged)


# ---- OPD (external teacher) --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [dict(num_iterations=2), dict(reward_funcs=[digit_reward, length_reward],
                                                                    reward_weights=[1.0, 0.5]),
                                     dict(mask_truncated_completions=True)], ids=["num_iterations", "rewards",
                                                                                   "mask_truncated"])
def test_opd_with_trl_options(tiny_model_dir, tiny_teacher_dir, tmp_path, options):
    reward_funcs = options.pop("reward_funcs", digit_reward)
    trainer, _ = build(tiny_model_dir, tmp_path, "opd", reward_funcs=reward_funcs, teacher_dir=tiny_teacher_dir,
                       **options)
    train_logs(trainer)


# ---- refused at config time: the combination cannot do what it says ----------------------------------------------
@pytest.mark.parametrize("algorithm", ["opsd", "opd", "sdpo"])
@pytest.mark.parametrize("option,value", [("beta", 0.1), ("loss_type", "grpo"), ("top_entropy_quantile", 0.5),
                                          ("importance_sampling_level", "sequence"), ("entropy_coef", 0.01),
                                          ("off_policy_mask_threshold", 0.5)])
def test_options_a_pure_distillation_loss_never_reads_are_refused(algorithm, option, value, tmp_path):
    extra = {"teacher_model": "some/teacher"} if algorithm == "opd" else {}
    if option == "importance_sampling_level":
        extra["loss_type"] = RLSDConfig.loss_type  # luspo/vespo aside, any level is legal for TRL
    with pytest.raises(ValueError, match=rf"RLSDConfig\.{option}: .* has no effect: algorithm='{algorithm}'.*distill_divergence"):
        RLSDConfig(output_dir=str(tmp_path), algorithm=algorithm, report_to=[], **{option: value, **extra})
    # The sampled-token form goes through TRL's surrogate: every option applies.
    RLSDConfig(output_dir=str(tmp_path), algorithm=algorithm, report_to=[], distill_divergence="sampled_token",
               **{option: value, **extra})


# ---- a reward model (a sequence classifier) as a reward function ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_reward_model_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-reward-model")
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", *TEACHER_ALGORITHMS])
def test_a_reward_model_beside_a_reward_function(tiny_model_dir, tiny_reward_model_dir, tmp_path, algorithm):
    trainer, generations = build(tiny_model_dir, tmp_path, algorithm,
                                 reward_funcs=[tiny_reward_model_dir, digit_reward], reward_weights=[1.0, 1.0])
    logs = train_logs(trainer)
    name = [k for k in logs[0] if k.startswith("rewards/") and k.endswith("/mean") and "digit" not in k]
    assert len(name) == 1 and all(math.isfinite(entry[name[0]]) and entry[name[0]] != 0.0 for entry in logs)
