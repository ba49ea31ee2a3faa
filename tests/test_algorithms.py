"""SDPO, GRPO+OPSD and contrastive teacher evidence: teacher contexts, equivalences, guarantees, short runs."""

import re

import pytest
import torch
from conftest import MARKER, digit_reward, make_dataset, tiny_config

from rlsd import RLSDConfig, RLSDTrainer
from rlsd.credit import maths as credit
from rlsd.algorithms import blend, contrast, sdpo
from test_trainer import generation_batch
from trainer_helpers import assert_same_update, loss_and_grads, record_teacher_texts, update_differs


def positional_reward(successes):
    """Reward 1.0 for the completions at these positions within each group of 4, 0 elsewhere."""
    def reward(prompts, completions, **kwargs):
        return [1.0 if i % 4 in successes else 0.0 for i in range(len(completions))]
    return reward


def make(model_dir, tmp_path, reward=digit_reward, dataset=None, **config):
    args = tiny_config(tmp_path, per_device_train_batch_size=8, **config)
    return RLSDTrainer(model=model_dir, reward_funcs=reward, args=args,
                       train_dataset=dataset if dataset is not None else make_dataset())


def decoded_teacher_prompts(trainer, rows, batch):
    ids, mask = trainer._teacher_prompt_tensors(rows, batch)
    return [trainer.processing_class.decode(i[m.bool()]) for i, m in zip(ids, mask)]


def completion_texts(trainer, batch):
    return trainer.processing_class.batch_decode(
        [i[m.bool()] for i, m in zip(batch["completion_ids"], batch["completion_mask"])], skip_special_tokens=True)


# ---- SDPO teacher context -------------------------------------------------------------------------------------------
def test_choose_demonstrations_takes_a_peer_success_never_the_row_itself():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert sdpo.choose_demonstrations(rewards, 4, threshold=1.0) == [3, 0, 0, 0, 5, None, 5, 5, None, None, None, None]
    assert sdpo.choose_demonstrations(torch.tensor([0.9, float("nan")]), 2, threshold=1.0) == [None, None]


def test_sdpo_plan_on_the_second_rank_finds_peers_on_the_first():
    # 12 rollouts in groups of 4 over 2 ranks of 6: group 1 (rollouts 4-7) straddles the ranks.
    rewards = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    completions = [f"completion {i}" for i in range(12)]
    rows = [{"prompt": "p", "solution": f"reference {k}"} for k in range(6)]
    plan = sdpo.plan_contexts(rows, 6, rewards, completions, group_size=4, threshold=1.0)
    assert [(c.source, c.peer) for c in plan] == [("peer", 4), ("peer", 4), ("peer", 11), ("peer", 11),
                                                  ("peer", 11), ("reference", None)]
    assert plan[0].demonstration == "completion 4", "rank 1's row 6 learns from rank 0's rollout 4"
    assert plan[5].demonstration == "reference 5", "rollout 11 is its group's only success: its own reference"


def test_sdpo_teacher_prompt_holds_a_peer_success_and_not_its_own_completion(tiny_model_dir, tmp_path):
    dataset = make_dataset().map(lambda row: {"feedback": f"error {row['solution'][:3]}"})
    trainer = make(tiny_model_dir, tmp_path, positional_reward({0, 2}), dataset, algorithm="sdpo",
                   sdpo_feedback_column="feedback")
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(rows)
    texts = completion_texts(trainer, batch)
    prompts = decoded_teacher_prompts(trainer, rows, batch)
    assert batch["teacher_rows"].tolist() == [1.0] * 8
    for i, prompt in enumerate(prompts):
        group = i - i % 4
        peer = group + (2 if i % 4 == 0 else 0)  # the first *other* success of the group
        assert "Correct solution:\n\n" + texts[peer] in prompt, (i, prompt)
        if texts[i] != texts[peer]:
            assert "Correct solution:\n\n" + texts[i] + "\n" not in prompt, "never the row's own completion"
        assert rows[i]["prompt"][0]["content"] in prompt and f"error {rows[i]['solution'][:3]}" in prompt
        assert MARKER not in prompt, "a peer demonstration carries no reference answer"
    student = [trainer.processing_class.decode(i[m.bool()]) for i, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
    assert not any("Correct solution" in p or "feedback" in p for p in student), "the student prompt is unchanged"


def test_sdpo_template_takes_the_raw_demonstration(tiny_model_dir, tmp_path):
    dataset = make_dataset()
    trainer = make(tiny_model_dir, tmp_path, positional_reward({0, 2}), dataset, algorithm="sdpo",
                   sdpo_template="{prompt}\n\nA reference solution (for grading, do not copy): {demonstration}")
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    batch = trainer._generate_and_score_completions(rows)
    texts = completion_texts(trainer, batch)
    prompts = decoded_teacher_prompts(trainer, rows, batch)
    assert "(for grading, do not copy): " + texts[2] + "<|im_end|>" in prompts[0]
    assert "Correct solution" not in prompts[0] and "Correctly solve" not in prompts[0]


def test_sdpo_groups_without_success_fall_back_to_the_reference_else_grpo_only(tiny_model_dir, tmp_path):
    def reward(prompts, completions, **kwargs):  # first group: one success; second: signal but no success
        return [[1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0][i] for i in range(len(completions))]

    dataset = make_dataset()
    trainer = make(tiny_model_dir, tmp_path / "ref", reward, dataset, algorithm="sdpo")
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    batch = trainer._generate_and_score_completions(rows)
    prompts = decoded_teacher_prompts(trainer, rows, batch)
    assert batch["teacher_rows"].tolist() == [1.0] * 8
    assert "Correct solution:\n\n" + rows[0]["solution"] in prompts[0], "row 0 is the only success: reference"
    for i in range(4, 8):
        assert "Correct solution:\n\n" + rows[i]["solution"] in prompts[i], "no success in the group: reference"

    no_solution = dataset.remove_columns(["solution"])
    trainer = make(tiny_model_dir, tmp_path / "none", reward, no_solution, algorithm="sdpo", sdpo_lambda=0.3,
                   distill_divergence="sampled_token")
    trainer.model.train()
    rows = generation_batch(trainer, no_solution)
    batch = trainer._generate_and_score_completions(rows)
    assert batch["teacher_rows"].tolist() == [0.0] + [1.0] * 3 + [0.0] * 4
    assert torch.equal(batch["teacher_per_token_logps"][4:], torch.zeros_like(batch["teacher_per_token_logps"][4:]))
    old = torch.randn(batch["completion_ids"].shape)
    token_adv = trainer.algorithm.token_advantages(trainer.teacher_pass, batch, old)
    mask = batch["completion_mask"].float()
    expected = 0.3 * batch["advantages"][4:].unsqueeze(1) * mask[4:]
    assert torch.equal(token_adv[4:], expected), "rows without a teacher carry only lambda * A_GRPO"
    assert batch["advantages"][4:].abs().sum() > 0


def test_sdpo_teacher_prompt_is_cut_in_the_demonstration_never_the_task(tiny_model_dir, tmp_path):
    dataset = make_dataset().map(lambda row: {"solution": "long " * 60})
    trainer = make(tiny_model_dir, tmp_path, positional_reward(set()), dataset, algorithm="sdpo",
                   teacher_max_prompt_length=120)
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    batch = trainer._generate_and_score_completions(rows)
    ids, mask = trainer._teacher_prompt_tensors(rows, batch)
    assert mask.sum(1).max() <= 120
    text = trainer.processing_class.decode(ids[0][mask[0].bool()])
    assert "What is 0+1?" in text and "Correct solution:" in text and "Correctly solve the original question" in text
    assert text.count("long") < 60


# ---- GRPO+OPSD ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("divergence", ["forward_kl", "sampled_token"])
def test_grpo_opsd_with_zero_coef_equals_grpo(tiny_model_dir, tmp_path, divergence):
    dataset = make_dataset()
    mixed = make(tiny_model_dir, tmp_path / "a", dataset=dataset, algorithm="grpo+opsd", opsd_coef=0.0,
                 distill_divergence=divergence)
    grpo = make(tiny_model_dir, tmp_path / "b", dataset=dataset, algorithm="grpo")
    mixed.model.train()
    torch.manual_seed(0)
    batch = mixed._generate_and_score_completions(generation_batch(mixed, dataset))
    assert batch["advantages"].abs().sum() > 0
    grads_grpo = assert_same_update(mixed, grpo, batch)
    mixed.args.opsd_coef = 1.0  # the distillation term is live: the comparison above can fail
    assert update_differs(mixed, batch, grads_grpo)


# ---- contrastive teacher evidence -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_contrastive_weights_keep_rlsd_guarantees(seed):
    generator = torch.Generator().manual_seed(seed)
    advantages = torch.randn(6, generator=generator)
    advantages[2] = 0.0
    right, wrong, old = (3 * torch.randn(6, 9, generator=generator) for _ in range(3))
    mask = (torch.rand(6, 9, generator=generator) > 0.2).float()
    lam, eps_w = 0.7, 0.3
    token_adv, stats = credit.contrastive_rlsd_token_advantages(advantages, right, wrong, mask, lam=lam, eps_w=eps_w)
    valid = mask.bool()
    assert torch.equal(torch.sign(token_adv)[valid], torch.sign(advantages).unsqueeze(1).expand_as(mask)[valid])
    nonzero = valid & (advantages != 0).unsqueeze(1)
    ratio = (token_adv.abs() / advantages.abs().unsqueeze(1))[nonzero]
    assert ratio.min() >= 1 - lam * eps_w - 1e-6 and ratio.max() <= 1 + lam * eps_w + 1e-6
    assert stats["sign_flips"] == 0 and stats["clip_high_frac"] > 0, "the bound is reached, so it is exercised"
    # The wrong reference's slot is the baseline: with s_old there, it is plain RLSD.
    plain, _ = credit.rlsd_token_advantages(advantages, right, old, mask, lam=lam, eps_w=eps_w)
    assert torch.equal(credit.contrastive_rlsd_token_advantages(advantages, right, old, mask, lam, eps_w)[0], plain)
    # A "wrong" reference that is the right one brings no evidence: delta = 0, w = 1, A_t = A.
    same, _ = credit.contrastive_rlsd_token_advantages(advantages, right, right.clone(), mask, lam, eps_w)
    assert torch.equal(same, advantages.unsqueeze(1) * mask)
    assert not torch.equal(token_adv, same)


def test_contrastive_target_is_the_student_when_both_references_agree():
    generator = torch.Generator().manual_seed(0)
    student, right, wrong = (torch.randn(2, 3, 11, generator=generator) for _ in range(3))
    same = credit.contrastive_target_logits(student, right, right)
    assert torch.allclose(credit.distillation_divergence(student, same), torch.zeros(2, 3), atol=1e-6)
    tilted = credit.contrastive_target_logits(student, right, wrong)
    assert (credit.distillation_divergence(student, tilted) > 1e-3).all()


def test_wrong_references_come_from_another_group_with_another_answer():
    keys = ["1", "1", "1", "1", "2", "2", "2", "2", "1", "1", "1", "1"]
    partners = contrast.wrong_reference_indices(keys, group_size=4)
    assert partners == [4, 4, 4, 4, 8, 8, 8, 8, 4, 4, 4, 4]
    assert contrast.wrong_reference_indices(["1"] * 8, 4) == [None] * 8, "no other answer: no contrast"
    assert contrast.wrong_reference_indices(["1", "1", "2", "2", None, None], 2)[4:] == [None, None]


def test_rlsd_contrast_scores_each_completion_under_another_rows_answer(tiny_model_dir, tmp_path):
    dataset = make_dataset()
    trainer = make(tiny_model_dir, tmp_path, dataset=dataset, algorithm="rlsd", teacher_contrast="wrong_reference")
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    seen = record_teacher_texts(trainer)
    batch = trainer._generate_and_score_completions(rows)
    right, wrong = seen
    shown = [[re.search(r"do not copy\): (\S+?)<", p).group(1) for p in pass_] for pass_ in (right, wrong)]
    for i, row in enumerate(rows):
        assert shown[0][i] == row["answer"]
        assert shown[1][i] == rows[4 if i < 4 else 0]["answer"] != row["answer"], "another group's answer"
        assert row["prompt"][0]["content"] in wrong[i]
    assert batch["contrast_rows"].tolist() == [1.0] * 8
    old = torch.randn(batch["completion_ids"].shape)
    token_adv = trainer.algorithm.token_advantages(trainer.teacher_pass, batch, old)
    mask = batch["completion_mask"]
    expected, _ = credit.rlsd_token_advantages(batch["sequence_advantages"], batch["teacher_per_token_logps"],
                                               batch["teacher_wrong_per_token_logps"], mask)
    assert torch.equal(token_adv, expected)


# ---- short runs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm,extra,expected", [
    ("sdpo", {}, ["distill/divergence", "sdpo/peer_demo_frac", "teacher/time_frac"]),
    ("sdpo", {"distill_divergence": "sampled_token", "sdpo_lambda": 0.5}, ["distill/sampled_advantage"]),
    ("grpo+opsd", {"distill_top_k": 8}, ["distill/divergence", "entropy"]),
    ("grpo+opsd", {"distill_divergence": "sampled_token", "teacher_contrast": "wrong_reference"},
     ["contrast/rows_frac", "teacher/contrast_time_frac"]),
])
@pytest.mark.parametrize("setup", ["lora", "ema"])
def test_three_step_training(tiny_model_dir, tmp_path, algorithm, extra, expected, setup):
    from peft import LoraConfig

    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") \
        if setup == "lora" else None
    args = tiny_config(tmp_path, algorithm=algorithm, max_steps=3, teacher_mode="ema", learning_rate=1e-2, **extra)
    trainer = RLSDTrainer(model=tiny_model_dir, reward_funcs=positional_reward({1}), args=args,
                          train_dataset=make_dataset(), peft_config=peft)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3
    for entry in logs:
        assert not [m for m in expected if m not in entry], entry
        assert all(v == v for v in entry.values() if isinstance(v, float)), entry
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    if setup == "lora":
        assert trainer.teacher.uses_adapter and trainer.teacher.copy is None
        assert any(not torch.equal(t, s) for t, s in trainer.teacher._adapter_pairs), "EMA teacher lags the student"
    else:
        assert trainer.teacher.copy is not None


def test_sdpo_defaults_to_an_ema_teacher():
    assert RLSDConfig(output_dir="x", algorithm="sdpo", use_cpu=True).teacher_mode == "ema"
    assert RLSDConfig(output_dir="x", algorithm="rlsd", use_cpu=True).teacher_mode == "live"


@pytest.mark.parametrize("field,value,extra", [
    ("algorithm", "sdpo2", {}),
    ("sdpo_lambda", 1.5, {"algorithm": "sdpo"}),
    ("opsd_coef", -0.1, {"algorithm": "grpo+opsd"}),
    ("opsd_coef", float("nan"), {"algorithm": "grpo+opsd"}),
    ("teacher_contrast", "wrong", {}),
    ("teacher_contrast", "wrong_reference", {"algorithm": "grpo"}),
    ("distill_top_k", 0, {"algorithm": "opsd"}),
    ("distill_top_k", 4, {"algorithm": "sdpo", "distill_divergence": "sampled_token"}),
    ("sdpo_feedback_column", " ", {"algorithm": "sdpo"}),
    ("sdpo_template", "{prompt} {solution}", {"algorithm": "sdpo"}),
])
def test_bad_option_values_name_the_field(field, value, extra):
    with pytest.raises(ValueError, match=rf"^RLSDConfig\.{field}: "):
        RLSDConfig(output_dir="x", use_cpu=True, **{**extra, field: value})


def test_top_k_divergence_matches_the_full_one_at_full_width():
    generator = torch.Generator().manual_seed(0)
    student, teacher_logits = torch.randn(2, 3, 7, generator=generator), torch.randn(2, 3, 7, generator=generator)
    full = credit.distillation_divergence(student, teacher_logits)
    assert torch.allclose(credit.distillation_divergence(student, teacher_logits, top_k=7), full)
    top2 = credit.distillation_divergence(student, teacher_logits, top_k=2)
    assert top2.shape == full.shape and not torch.allclose(top2, full)


def test_blended_token_advantages_mix_as_documented():
    advantages = torch.tensor([1.0, -2.0])
    q, b = torch.tensor([[0.5, 1.0], [2.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = credit.blended_token_advantages(advantages, q, b, mask, torch.tensor([1.0, 0.0]), 0.25, 0.75)
    assert torch.equal(out, torch.tensor([[0.25 + 0.75 * 0.5, 0.0], [-0.5, -0.5]]))
    assert blend.BlendedDistillation.loss.__doc__ and sdpo.SDPO.loss_weights.__doc__


# ---- rlsd compare ---------------------------------------------------------------------------------------------------
def test_compare_runs_the_new_algorithms_and_contrast_variants(tiny_model_dir, tmp_path, capsys):
    import json

    from rlsd.app.cli import main
    from rlsd.config import algorithm_variant
    from test_cli import write_config

    assert algorithm_variant("grpo+opsd") == ("grpo+opsd", {})
    assert algorithm_variant("sdpo+contrast") == ("sdpo", {"teacher_contrast": "wrong_reference"})
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, max_steps=1)
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--algorithms", "sdpo,grpo+opsd,rlsd+contrast",
                 "--output-dir", str(out)]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert [row["run"] for row in summary] == ["sdpo", "grpo+opsd", "rlsd+contrast"]
    assert [row["algorithm"] for row in summary] == ["sdpo", "grpo+opsd", "rlsd"]
    resolved = json.loads((out / "rlsd+contrast" / "run_config.json").read_text())["training_args"]
    assert resolved["algorithm"] == "rlsd" and resolved["teacher_contrast"] == "wrong_reference"
    assert main(["compare", "--config", str(config), "--algorithms", "grpo+contrast", "--output-dir", str(out)]) == 2
    assert "--algorithms: 'grpo+contrast': +contrast needs one of" in capsys.readouterr().err


def test_full_vocabulary_contrast_distils_nothing_when_the_wrong_reference_is_the_right_one(
        tiny_model_dir, tmp_path, monkeypatch):
    from rlsd.teacher import prompts as teacher

    dataset = make_dataset()
    trainer = make(tiny_model_dir, tmp_path, dataset=dataset, algorithm="opsd", teacher_contrast="wrong_reference")
    trainer.model.train()
    rows = generation_batch(trainer, dataset)
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(rows)
    assert batch["contrast_rows"].tolist() == [1.0] * 8
    loss_contrast, _ = loss_and_grads(trainer, batch)
    assert loss_contrast > 1e-7

    monkeypatch.setattr(contrast, "wrong_reference_prompts", lambda rows, fields, template, *_: [
        (teacher.teacher_prompt(r["prompt"], r, template), r) for r in rows])
    torch.manual_seed(0)
    same = trainer._generate_and_score_completions(rows)
    loss_same, grads = loss_and_grads(trainer, same)
    # The target is the student itself: nothing left but float noise, far below the contrasted loss (and below
    # plain OPSD's divergence, which is what a target that ignored the contrast would give).
    assert loss_same.abs() < 1e-7 and loss_same.abs() < loss_contrast / 20
    assert max(g.abs().max() for g in grads.values()) < 1e-7
