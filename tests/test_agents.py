"""Agents: RLSD and the other algorithms over TRL's multi-turn tool loop (tools= and environment_factory=).

Generation is scripted (see agent_helpers.ScriptedPolicy) so that every rollout really calls tools; the tool loop,
tool execution and failure handling, `tool_mask`, parsing, the teacher pass and the losses are the real ones.
"""

import pytest
import torch
from transformers import AutoTokenizer
from agent_helpers import (MARKER, ObservedShop, Shop, agent_trainer, algorithm_config, calc, contains,
                           generation_batch, make_rows, tool_model_dir)  # noqa: F401 (fixture)

from rlsd.agents import glue as agents
from rlsd.config import ALGORITHMS
from rlsd.tasks.tiny import build_char_tokenizer, build_tiny_model
from rlsd.tasks.tiny_tools import TOOL_CHAT_TEMPLATE, build_tool_tokenizer
from trainer_helpers import assert_same_update, update_differs


# ---- the teacher pass over a multi-turn completion -----------------------------------------------------------------
@pytest.mark.parametrize("share_prefix", [False, True])
def test_teacher_scores_exactly_the_multi_turn_completion_like_a_direct_model_call(tool_model_dir, tmp_path,
                                                                                  share_prefix):
    trainer = agent_trainer(tool_model_dir, tmp_path, algorithm="rlsd", teacher_share_prefix=share_prefix)
    calls = []
    original = trainer._get_per_token_logps_and_entropies

    def record(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        calls.append((input_ids.clone(), attention_mask.clone(), logits_to_keep))
        return original(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    trainer._get_per_token_logps_and_entropies = record
    trainer.model.eval()
    rows = make_rows()
    batch = trainer._generate_and_score_completions(generation_batch(trainer, rows))
    tool_mask, completion_ids = batch["tool_mask"], batch["completion_ids"]
    assert (tool_mask * batch["completion_mask"] == 0).sum(dim=1).gt(0).all(), "every rollout holds a tool result"
    scored = batch["advantages"].nonzero(as_tuple=True)[0]
    assert scored.numel() > 0

    if not share_prefix:  # the plain pass: one forward over [teacher prompt ; completion], the last of the step
        input_ids, attention_mask, keep = calls[-1]
        assert keep == completion_ids.size(1)
        assert torch.equal(input_ids[:, -keep:], completion_ids[scored]), "the teacher scores the student's tokens"

    # The teacher's log-probs equal a plain forward of the model over [teacher prompt ; completion].
    teacher_ids, teacher_mask = trainer._teacher_prompt_tensors(generation_batch(trainer, rows), batch)
    model = trainer.model
    for row in scored.tolist():
        prompt = teacher_ids[row][teacher_mask[row].bool()]
        length = int(batch["completion_mask"][row].sum())
        completion = completion_ids[row, :length]
        text = trainer.processing_class.decode(prompt)
        assert "Tools: price(item)" in text and MARKER in text, "the teacher sees the tool list and the reference"
        with torch.no_grad():
            logits = model(torch.cat([prompt, completion]).unsqueeze(0)).logits[0, len(prompt) - 1:-1]
        direct = torch.log_softmax(logits.float(), dim=-1).gather(1, completion.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(batch["teacher_per_token_logps"][row, :length], direct, atol=1e-5, rtol=1e-5)
    assert batch["teacher_per_token_logps"][batch["advantages"] == 0].abs().sum() == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tool_result_tokens_get_no_learning_signal(tool_model_dir, tiny_teacher_dir, tmp_path, algorithm):
    trainer = agent_trainer(tool_model_dir, tmp_path, **algorithm_config(algorithm, tiny_teacher_dir))
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_batch(trainer, make_rows()))
    grads = []

    def keep_grad(module, args, output):
        if output.requires_grad:
            output.register_hook(grads.append)

    # The final norm's output at position p feeds only the prediction of token p + 1 (TRL fuses the LM head, so
    # logits never exist as a tensor to hook).
    handle = trainer.model.model.norm.register_forward_hook(keep_grad)
    try:
        trainer.current_gradient_accumulation_steps = 1
        trainer.compute_loss(trainer.model, batch).backward()
    finally:
        handle.remove()
    assert grads, "the loss ran no student forward"
    length = batch["completion_ids"].size(1)  # position -length-1+t predicts completion token t; grpo+opsd runs two
    per_token = sum(g[:, -length - 1:-1].abs().sum(dim=-1) for g in grads)
    tool_tokens = (1 - batch["tool_mask"]) * batch["completion_mask"]
    agent_tokens = batch["tool_mask"] * batch["completion_mask"]
    assert tool_tokens.sum() > 0
    assert per_token[tool_tokens.bool()].abs().max() == 0, f"{algorithm}: tool results got a learning signal"
    assert per_token[agent_tokens.bool()].abs().max() > 0, f"{algorithm}: the agent's own tokens got none"
    if algorithm == "rlsd":  # its (B, T) token advantages themselves, not only TRL's masked loss
        token_adv = trainer.algorithm.token_advantages(trainer.teacher_pass, batch, torch.zeros_like(batch["teacher_per_token_logps"]))
        assert token_adv[tool_tokens.bool()].abs().max() == 0 and token_adv[agent_tokens.bool()].abs().max() > 0


def test_privileged_text_reaches_every_teacher_row_and_no_agent_turn(tool_model_dir, tmp_path):
    rows = [{k: v for k, v in row.items() if k != "solution"} for row in make_rows()]  # the env holds the solution
    trainer = agent_trainer(tool_model_dir, tmp_path, rows=rows, tools=(), environment=Shop, algorithm="opsd",
                            distill_divergence="sampled_token", teacher_share_prefix=False)  # one forward to record
    marker = trainer.processing_class(MARKER, add_special_tokens=False)["input_ids"]
    teacher_inputs, student_inputs = [], []
    original, activate = trainer._get_per_token_logps_and_entropies, trainer.teacher.activate
    state = {"teacher": False}

    def record(model, input_ids, *args, **kwargs):
        (teacher_inputs if state["teacher"] else student_inputs).extend(input_ids.tolist())
        return original(model, input_ids, *args, **kwargs)

    class Flag:
        def __enter__(self):
            state["teacher"] = True
            self.inner = activate()
            return self.inner.__enter__()

        def __exit__(self, *exc):
            state["teacher"] = False
            return self.inner.__exit__(*exc)

    trainer._get_per_token_logps_and_entropies = record
    trainer.teacher.activate = Flag
    trainer.train()
    policy = trainer._generate_single_turn
    assert teacher_inputs and student_inputs and policy.seen
    assert all(contains(ids, marker) for ids in teacher_inputs), "a teacher row lacks the privileged context"
    assert not any(contains(ids, marker) for ids in student_inputs), "the privileged context reached the student"
    assert not any(contains(ids, marker) for ids in policy.seen), "the privileged context reached an agent turn"
    assert any("Look up" in trainer.processing_class.decode(ids) and "tool\n" in trainer.processing_class.decode(ids)
               for ids in policy.seen), "the rollouts were multi-turn"


def test_lambda_zero_equals_grpo_with_tools(tool_model_dir, tmp_path):
    rlsd = agent_trainer(tool_model_dir, tmp_path / "a", algorithm="rlsd", rlsd_lambda=0.0)
    grpo = agent_trainer(tool_model_dir, tmp_path / "b", algorithm="grpo")
    rlsd.model.train()
    batch = rlsd._generate_and_score_completions(generation_batch(rlsd, make_rows()))
    assert batch["advantages"].abs().sum() > 0 and (batch["tool_mask"] == 0).any()

    grads_grpo = assert_same_update(rlsd, grpo, batch)
    rlsd.args.rlsd_lambda = 1.0
    assert update_differs(rlsd, batch, grads_grpo), "lambda=1 must differ"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_three_training_steps_with_tools_and_an_environment(tool_model_dir, tiny_teacher_dir, tmp_path, algorithm):
    trainer = agent_trainer(tool_model_dir, tmp_path, tools=(calc,), environment=Shop, use_calc=True, max_steps=3, max_completion_length=200,
                            per_device_train_batch_size=4, num_generations=4,
                            **algorithm_config(algorithm, tiny_teacher_dir))
    trainer.train()
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert trainer.state.global_step == 3
    assert logs["agent/turns"] == pytest.approx(3.0), "look up, multiply, answer"
    assert logs["tools/call_frequency"] == pytest.approx(2.0) and logs["tools/failure_frequency"] == 0
    assert 0 < logs["agent/tool_output_frac"] < 1
    if algorithm == "rlsd":
        assert "rlsd/weight_tool_call" in logs and "rlsd/weight_reasoning" in logs
        assert logs["rlsd/sign_flips"] == 0
    elif algorithm == "rlcsd":  # what the contrast adds to A, split by kind
        assert logs["rlcsd/sign_flips"] == 0 and "rlcsd/residual_reasoning" in logs
    elif algorithm != "grpo":  # the teacher's per-token signal, split by kind like RLSD's weights
        for kind in ("tool_call", "reasoning"):
            assert logs[f"distill/divergence_{kind}"] >= 0.0, "a KL divergence per agent-token kind"
        assert "rlsd/weight_tool_call" not in logs


@pytest.mark.parametrize("algorithm", ["opsd", "grpo+opsd"])
def test_sampled_token_teacher_signal_is_split_by_token_kind(tool_model_dir, tmp_path, algorithm):
    trainer = agent_trainer(tool_model_dir, tmp_path, tools=(calc,), environment=Shop, use_calc=True, max_steps=2,
                            max_completion_length=200, per_device_train_batch_size=4, num_generations=4,
                            algorithm=algorithm, distill_divergence="sampled_token")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "distill/sampled_advantage" in entry]
    assert len(logs) == 2
    for entry in logs:
        call, reason = entry["distill/sampled_advantage_tool_call"], entry["distill/sampled_advantage_reasoning"]
        fractions = entry["agent/tool_call_token_frac"] / (1 - entry["agent/tool_output_frac"])  # of agent tokens
        # Both kinds together are the overall mean, weighted by their token counts.
        assert fractions * call + (1 - fractions) * reason == pytest.approx(entry["distill/sampled_advantage"],
                                                                            rel=1e-3, abs=1e-5)


def test_a_raising_tool_costs_only_its_sample_and_is_counted(tool_model_dir, tmp_path):
    rows = make_rows(("pen", "ghost", "cup", "hat"))  # price("ghost") raises KeyError
    trainer = agent_trainer(tool_model_dir, tmp_path, rows=rows, algorithm="rlsd", per_device_train_batch_size=16,
                            max_steps=2)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "tools/failure_frequency" in entry]
    assert trainer.state.global_step == 2
    assert logs[0]["tools/failure_frequency"] == pytest.approx(0.25), "one prompt of four, every generation"
    completions = [trainer.processing_class.decode(ids) for ids in trainer._generate_single_turn.seen]
    ghost = [c for c in completions if "ghost" in c and "tool\n" in c]
    others = [c for c in completions if "ghost" not in c and "tool\n" in c]
    assert ghost and all("{'error': \"'ghost'\"}" in c for c in ghost)
    assert others and not any("error" in c for c in others)


# ---- pure pieces and loaders ---------------------------------------------------------------------------------------
def test_tool_call_tokens_and_turns_are_found_from_the_tool_mask():
    # agent: "ab<c>x" | tool: "77" | agent: "ok" | pad
    ids = torch.tensor([[1, 2, 9, 9, 5, 7, 7, 3, 4, 0]])
    tool_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 1, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    kind = agents.tool_call_token_mask(ids, tool_mask, completion_mask, [[9, 9]])
    assert kind.tolist() == [[False, False, True, True, True, False, False, False, False, False]]
    assert agents.agent_turn_counts(tool_mask, completion_mask).tolist() == [2]
    token_adv = torch.tensor([[2.0, 2.0, 3.0, 3.0, 1.0, 0.0, 0.0, 2.0, 2.0, 0.0]])
    parts = agents.weight_split(token_adv, torch.tensor([2.0]), tool_mask * completion_mask, kind)
    assert parts["tool_call_sum"] / parts["tool_call_count"] == pytest.approx((1.5 + 1.5 + 0.5) / 3)
    assert parts["reasoning_sum"] / parts["reasoning_count"] == pytest.approx(1.0)
    # Any per-token signal: tool-result tokens and padding never count, even when they hold a value (or inf).
    signal = torch.tensor([[1.0, 3.0, 4.0, 4.0, 4.0, float("inf"), 9.0, 5.0, 7.0, -9.0]])
    parts = agents.kind_split(signal, tool_mask * completion_mask, kind)
    assert parts["tool_call_sum"] / parts["tool_call_count"] == pytest.approx(4.0)
    assert parts["reasoning_sum"] / parts["reasoning_count"] == pytest.approx((1.0 + 3.0 + 5.0 + 7.0) / 4)


def test_tools_and_environments_load_by_path_with_one_line_errors(tmp_path):
    (tmp_path / "my_tools.py").write_text(
        'def calculator(expression: str) -> str:\n    """Evaluate.\n\n    Args:\n        expression: the sum\n    """\n'
        '    return expression\n\ndef bare(x):\n    return x\n\nVALUE = 3\n')
    (tmp_path / "my_env.py").write_text(
        "class Good:\n    def reset(self, **row):\n        return None\n"
        '    def look(self, key: str) -> str:\n        """Look up.\n\n        Args:\n            key: the key\n        """\n'
        "        return key\n\nclass NoReset:\n    pass\n\n"
        "class Leaky:\n    def reset(self, **row):\n        return None\n"
        "    def privileged_context(self):\n        return 'x'\n")
    tools = agents.load_tools([f"{tmp_path}/my_tools.py:calculator"])
    assert tools[0]("1+2") == "1+2"
    assert agents.load_environment(f"{tmp_path}/my_env.py:Good").__name__ == "Good"
    cases = [
        (lambda: agents.load_tools([f"{tmp_path}/missing.py:calculator"]), "does not exist"),
        (lambda: agents.load_tools([f"{tmp_path}/my_tools.py:nope"]), "has no function 'nope'"),
        (lambda: agents.load_tools([f"{tmp_path}/my_tools.py:bare"]), "not usable as a tool"),
        (lambda: agents.load_tools([f"{tmp_path}/my_tools.py:VALUE"]), "not a function"),
        (lambda: agents.load_tools(["calculator"]), "expected"),
        (lambda: agents.load_environment(f"{tmp_path}/my_env.py:NoReset"), "no reset()"),
        (lambda: agents.load_environment(f"{tmp_path}/my_env.py:Leaky"), "_privileged_context"),
    ]
    for call, expected in cases:
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert expected in message and "\n" not in message, message


@pytest.mark.parametrize("algorithm", ["rlsd", "sdpo"])
def test_every_teacher_prompt_starts_from_the_prompt_as_rolled_out(tool_model_dir, tmp_path, algorithm):
    rows = make_rows()
    for row in rows:
        row["answer"] = str(int(row["answer"]) + len(row["item"]))  # distinct answers: a wrong reference exists
    trainer = agent_trainer(tool_model_dir, tmp_path, rows=rows, tools=(), environment=ObservedShop,
                            algorithm=algorithm, teacher_contrast="wrong_reference")
    rendered = []
    original = trainer._tokenize_prompts

    def record(prompts):
        rendered.extend(prompts)
        return original(prompts)

    trainer._tokenize_prompts = record
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_batch(trainer, rows))
    teacher_prompts = rendered[len(generation_batch(trainer, rows)):]  # after the student's own prompts
    if algorithm == "rlsd":  # the right and the wrong reference were both rendered
        assert batch["contrast_rows"].sum() > 0 and len(teacher_prompts) >= 2 * len(batch["completion_ids"])
    assert teacher_prompts and all("Budget: 500." in p[-1]["content"] for p in teacher_prompts), \
        "a teacher prompt lost the environment's observation"


class SilentShop(Shop):
    """An environment whose privileged hook supplies nothing."""

    def _privileged_context(self):
        return {}


def test_a_privileged_field_neither_the_row_nor_the_environment_has_is_a_clear_error(tool_model_dir, tmp_path):
    rows = [{k: v for k, v in row.items() if k != "solution"} for row in make_rows()]
    # The column check waits for the first batch, since the environment could have supplied the field.
    trainer = agent_trainer(tool_model_dir, tmp_path, rows=rows, tools=(), environment=SilentShop, algorithm="rlsd")
    with pytest.raises(ValueError, match=r"privileged_fields: rollout 0 has no \['solution'\].*SilentShop"):
        trainer._generate_and_score_completions(generation_batch(trainer, rows))
    with pytest.raises(ValueError, match="rename privileged_context"):
        class Leaky(Shop):
            def privileged_context(self):
                return "the answer"

        agent_trainer(tool_model_dir, tmp_path, rows=rows, tools=(), environment=Leaky, algorithm="rlsd")


def test_an_environments_privileged_string_is_never_silently_dropped(tool_model_dir, tmp_path):
    """`_privileged_context()` returning a string fills `solution`; with privileged_fields=['answer'] the teacher
    would never see it, so the run stops with one line naming the field to add (before any update)."""
    trainer = agent_trainer(tool_model_dir, tmp_path, tools=(), environment=Shop, algorithm="rlsd",
                            privileged_fields=["answer"])
    with pytest.raises(ValueError, match=r"^RLSDConfig\.privileged_fields=\['answer'\]: Shop\._privileged_context\(\) "
                                         r"gives a string \(the 'solution' field\) that the teacher would never see; "
                                         r"add it: privileged_fields=\['answer', 'solution'\]$"):
        trainer._generate_and_score_completions(generation_batch(trainer, make_rows()))

    class Annotated(Shop):  # annotated `-> str`: refused when the trainer is built
        def _privileged_context(self) -> str:
            return super()._privileged_context()

    with pytest.raises(ValueError, match=r"Annotated\._privileged_context\(\) -> str gives .*add it: "
                                         r"privileged_fields=\['answer', 'solution'\]"):
        agent_trainer(tool_model_dir, tmp_path, tools=(), environment=Annotated, algorithm="rlsd",
                      privileged_fields=["answer"])
    # GRPO has no teacher to show it to: nothing to refuse.
    agent_trainer(tool_model_dir, tmp_path, tools=(), environment=Annotated, algorithm="grpo",
                  privileged_fields=["answer"])
    # With the field named, the string reaches every teacher row: test_privileged_text_reaches_every_teacher_row...


# ---- a user's own tool-call syntax: found by the tokenizer's response parser ----------------------------------------
OWN_CALL = "<<{name} {args}>>"
OWN_TEMPLATE = TOOL_CHAT_TEMPLATE.replace("'<call>' + f.name", "'<<' + f.name + ' '").replace("'</call>'", "'>>'")
OWN_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open_pattern": r"<<(?P<name>\w+) ", "close_pattern": r">>", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}}},
        "content": {"close_pattern": r"<\|im_end\|>\s*|$", "content": "text"},
    },
}


@pytest.fixture(scope="module")
def own_syntax_model_dir(tmp_path_factory):
    """A tiny model whose template writes calls as `<<name {json}>>`, with the matching response parser."""
    path = tmp_path_factory.mktemp("own-syntax")
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template, tokenizer.response_template = OWN_TEMPLATE, OWN_RESPONSE_TEMPLATE
    build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_tool_call_tokens_come_from_the_tokenizers_own_parser(own_syntax_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(own_syntax_model_dir)
    turn = tokenizer('Look up pen.<<price {"item":"pen"}>><|im_end|>', add_special_tokens=False)["input_ids"]
    assert tokenizer.parse_response(turn, prefix="")["tool_calls"][0]["function"]["name"] == "price"
    assert agents.tool_call_finder(tokenizer)(turn) == len("Look up pen."), "the call's first token: `<`"
    assert agents.tool_call_finder(tokenizer)(tokenizer("Answer: 26")["input_ids"]) is None
    fallback = [tokenizer(m, add_special_tokens=False)["input_ids"] for m in agents.TOOL_CALL_MARKERS]
    assert agents.marker_finder(fallback)(turn) is None, "the hard-coded openers alone would miss this syntax"
    tool_tokenizer = build_tool_tokenizer()  # the known template: parser and fallback agree
    known = tool_tokenizer('Look up pen.<call>price{"item":"pen"}</call>', add_special_tokens=False)["input_ids"]
    assert agents.tool_call_finder(tool_tokenizer)(known) == len("Look up pen.")
    tool_tokenizer.response_template = None
    assert agents.tool_call_finder(tool_tokenizer)(known) == len("Look up pen.")


def test_own_tool_call_syntax_gets_the_per_kind_metrics(own_syntax_model_dir, tmp_path, monkeypatch):
    batches, annotate = [], agents.annotate_rollouts

    def keep(trainer, output):
        annotate(trainer, output)
        batches.append(output)

    monkeypatch.setattr(agents, "annotate_rollouts", keep)
    trainer = agent_trainer(own_syntax_model_dir, tmp_path, tools=(calc,), environment=Shop, use_calc=True,
                            call=OWN_CALL, max_steps=2, max_completion_length=200, per_device_train_batch_size=4,
                            num_generations=4, algorithm="rlsd")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert entry["tools/call_frequency"] == pytest.approx(2.0), "TRL parsed both calls and ran the tools"
        assert entry["agent/tool_call_token_frac"] > 0
    scored = [entry for entry in logs if entry["teacher/rows_scored_frac"] > 0]
    assert scored and all("rlsd/weight_tool_call" in e and "rlsd/weight_reasoning" in e for e in scored)
    # The marked tokens are exactly the two calls (each to the end of its turn), in every rollout.
    tokenizer = trainer.processing_class
    for output in batches:
        for ids, mask in zip(output["completion_ids"], output["tool_call_mask"]):
            marked = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            assert marked.startswith("<<price ") and "<<calc " in marked and ">>" in marked, marked
            assert "Look up" not in marked and "Multiply." not in marked and "Answer" not in marked, marked
