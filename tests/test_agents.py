"""Agents: RLSD and the other algorithms over TRL's multi-turn tool loop (tools= and environment_factory=).

Generation is scripted (a deterministic policy replaces `_generate_single_turn`, the only backend call) so that
every rollout really calls tools; everything else is TRL's and rlsd's own code: the tool loop, tool execution and
failure handling, `tool_mask`, parsing, the teacher pass and the losses.
"""

import random
import re

import pytest
import torch
from conftest import MARKER, tiny_config
from datasets import Dataset

from rlsd import RLSDTrainer, agents
from rlsd.config import ALGORITHMS
from rlsd.tasks.tiny import build_tiny_model
from rlsd.tasks.tiny_tools import build_tool_tokenizer

PRICES = {"pen": 13, "cup": 7, "hat": 21, "box": 4}


def price(item: str) -> str:
    """The unit price of an item.

    Args:
        item: the item's name
    """
    return str(PRICES[item])  # an unknown item raises: TRL records the error as the tool's output


def calc(expr: str) -> str:
    """Evaluate a product a*b.

    Args:
        expr: the product, e.g. 3*13
    """
    left, right = expr.split("*")
    return str(int(left) * int(right))


class Shop:
    """An environment: the prices are its tool, the worked solution its privileged context."""

    def reset(self, **row):
        self.count, self.item = row["count"], row["item"]
        return None

    def price(self, item: str) -> str:
        """The unit price of an item.

        Args:
            item: the item's name
        """
        return str(PRICES[item])

    def _privileged_context(self):
        return f"{MARKER} {self.item} costs {PRICES[self.item]}, so {self.count}*{PRICES[self.item]}"


def make_rows(items=("pen", "cup", "hat", "box")):
    rows = []
    for i, item in enumerate(items):
        count = i + 2
        rows.append({"prompt": [{"role": "user", "content": f"Cost of {count} {item}?"}], "count": count,
                     "item": item, "answer": str(count * PRICES.get(item, 0)),
                     "solution": f"{MARKER} price({item}), then {count}*price"})
    return rows


def reward(prompts, completions, answer, **kwargs):
    texts = ["\n".join(m["content"] for m in c if m["role"] == "assistant") for c in completions]
    return [1.0 if re.search(rf"Answer: {a}\b", t) else 0.0 for t, a in zip(texts, answer)]


class ScriptedPolicy:
    """A seeded stand-in for `model.generate` that plays the tool protocol: look up, multiply, answer (sometimes
    wrongly, so groups have signal). `seen` keeps every prompt it was asked to continue."""

    def __init__(self, tokenizer, seed=0, use_calc=False):
        self.tokenizer, self.rng, self.use_calc, self.seen = tokenizer, random.Random(seed), use_calc, []

    def __call__(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:
            self.seen.append(list(ids))
            text = self.tokenizer.decode(ids)
            count, item = re.search(r"Cost of (\d+) (\w+)\?", text).groups()
            results = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", text)
            if not results:
                reply = f"Look up {item}.<call>price{{\"item\":\"{item}\"}}</call>"
            elif self.use_calc and len(results) == 1 and results[0].isdigit():
                reply = f"Multiply.<call>calc{{\"expr\":\"{count}*{results[0]}\"}}</call>"
            else:
                value = int(results[-1]) * (1 if self.use_calc else int(count)) if results[-1].isdigit() else 0
                reply = f"Answer: {value + self.rng.choice([0, 0, 1])}"
            out.append(self.tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"])
        return out, None


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-tool-model")
    tokenizer = build_tool_tokenizer()
    build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def algorithm_config(algorithm, teacher_dir):
    extra = {"opd": {"teacher_model": teacher_dir}}.get(algorithm, {})
    return {"algorithm": algorithm, **extra}


def agent_trainer(model_dir, tmp_path, rows=None, tools=(price,), environment=None, use_calc=False, **config):
    config = {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 120,
              "privileged_fields": ["answer", "solution"], "rlsd_eps_w": 0.5, **config}
    args = tiny_config(tmp_path, **config)
    trainer = RLSDTrainer(model=model_dir, reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(rows or make_rows()), tools=list(tools),
                          environment_factory=environment)
    trainer._generate_single_turn = ScriptedPolicy(trainer.processing_class, use_calc=use_calc)
    return trainer


def generation_batch(trainer, rows):
    per_prompt = trainer.args.per_device_train_batch_size // trainer.num_generations
    return [dict(row) for row in rows[:per_prompt] for _ in range(trainer.num_generations)]


def contains(ids, pattern):
    ids = list(ids)
    return any(ids[i:i + len(pattern)] == pattern for i in range(len(ids) - len(pattern) + 1))


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
        token_adv = trainer._token_advantages(batch, torch.zeros_like(batch["teacher_per_token_logps"]))
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

    def loss_and_grads(trainer):
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = 1
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    loss_rlsd, grads_rlsd = loss_and_grads(rlsd)
    loss_grpo, grads_grpo = loss_and_grads(grpo)
    assert torch.equal(loss_rlsd, loss_grpo) and grads_rlsd.keys() == grads_grpo.keys()
    assert all(torch.equal(grads_rlsd[n], grads_grpo[n]) for n in grads_rlsd)
    rlsd.args.rlsd_lambda = 1.0
    _, grads_full = loss_and_grads(rlsd)
    assert any(not torch.equal(grads_full[n], grads_grpo[n]) for n in grads_full), "lambda=1 must differ"


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


# ---- the built-in agent task, its warm-start data, run configs ------------------------------------------------------
def test_shop_task_needs_its_tools_and_its_worked_episode_replays_to_the_answer():
    from rlsd.agent_rollout import run_tool_calls
    from rlsd.tasks import get_task
    from rlsd.tasks.shop import PRICES

    task = get_task("shop")
    assert [t.__name__ for t in task.tools] == ["price", "calc"]
    for difficulty in (1, 2, 3):
        rows = task.make_rows(20, seed=3, difficulty=difficulty, split="train")
        assert rows == task.make_rows(20, seed=3, difficulty=difficulty, split="train"), "seeded"
        held_out = {r["prompt"][0]["content"] for r in task.make_rows(20, seed=3, difficulty=difficulty, split="test")}
        assert not held_out & {r["prompt"][0]["content"] for r in rows}
        for row in rows:
            question = row["prompt"][0]["content"]
            assert not any(str(p) in question.split() for p in PRICES.values() if p > 99), "prices stay hidden"
            episode = task.transcript(row)
            calls = [m for m in episode if m["role"] == "assistant" and m.get("tool_calls")]
            assert len(calls) == difficulty + 1, "one lookup per item, then one calculation"
            for call in calls:  # the tools really produce the results the episode shows
                shown = episode[episode.index(call) + 1]["content"]
                assert run_tool_calls(call["tool_calls"], {t.__name__: t for t in task.tools})[0]["content"] == shown
            assert task.reward([row["prompt"]], [episode], [row["answer"]]) == [1.0]
            assert row["solution"].startswith("price ") and row["solution"].endswith(f"Answer: {row['answer']}")
    failing = run_tool_calls([{"type": "function", "function": {"name": "price", "arguments": {"item": "sofa"}}}],
                             {t.__name__: t for t in task.tools})
    assert "no item 'sofa'" in failing[0]["content"]
    with pytest.raises(ValueError):
        task.tools[1]("__import__('os')")


def test_warm_start_examples_train_only_the_agents_turns_in_the_trainers_layout(tool_model_dir, tmp_path):
    from rlsd.agent_rollout import sft_example
    from rlsd.tasks import get_task

    task = get_task("shop")
    row = task.make_rows(1, seed=0, split="train")[0]
    tokenizer = build_tool_tokenizer()
    example = sft_example(tokenizer, row["prompt"], task.transcript(row), task.tools)
    trained = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != -100])
    assert trained.count("<call>") == 2 and trained.endswith(f"Answer: {row['answer']}<|im_end|>")
    assert "<|im_start|>" not in trained and "Tools:" not in trained, "prompt and tool results are not trained"

    # The same episode through TRL's tool loop gives the same tokens and the same mask.
    trainer = agent_trainer(tool_model_dir, tmp_path, rows=[row], tools=task.tools, per_device_train_batch_size=4,
                            max_completion_length=200)
    replies = [m for m in task.transcript(row) if m["role"] == "assistant"]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": "x"}, m], tokenize=False).split(
        "<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0] + "<|im_end|>" for m in replies]

    def replay(prompt_ids, *args, **kwargs):
        turn = [tokenizer.decode(ids).count("<|im_start|>tool") for ids in prompt_ids]
        return [tokenizer(texts[t], add_special_tokens=False)["input_ids"] for t in turn], None

    trainer._generate_single_turn = replay
    batch = trainer._generate_and_score_completions([dict(row)] * 4)
    prompt = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()
    length = int(batch["completion_mask"][0].sum())
    assert prompt + batch["completion_ids"][0, :length].tolist() == example["input_ids"]
    labels_mask = [label != -100 for label in example["labels"][len(prompt):]]
    assert batch["tool_mask"][0, :length].bool().tolist() == labels_mask


def test_run_config_takes_tools_and_an_environment_by_path(tool_model_dir, tmp_path):
    from rlsd.config import load_run_config
    from rlsd.run import RunError, build_trainer

    (tmp_path / "my_tools.py").write_text(
        'def lookup(key: str) -> str:\n    """Look a key up.\n\n    Args:\n        key: the key\n    """\n'
        "    return key\n\ndef untyped(key):\n    return key\n")
    (tmp_path / "my_env.py").write_text(
        "class Env:\n    def reset(self, **row):\n        return None\n"
        '    def peek(self, key: str) -> str:\n        """Peek.\n\n        Args:\n            key: the key\n        """\n'
        "        return key\n    def _privileged_context(self):\n        return 'hidden'\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tool_model_dir}\ntask: shop\ntask_train_size: 8\ntask_eval_size: 4\neval_every: 0\n"
                      f"samples_every: 0\ntools: ['{tmp_path}/my_tools.py:lookup']\n"
                      f"environment: '{tmp_path}/my_env.py:Env'\n"
                      "training: {per_device_train_batch_size: 4, num_generations: 4, max_steps: 1, use_cpu: true, "
                      "report_to: [], save_strategy: 'no', privileged_fields: [answer, solution]}\n")
    trainer = build_trainer(load_run_config(str(config)), output_dir=tmp_path / "out").trainer
    assert {t.__name__ for t in trainer.tools} == {"lookup", "peek"}
    for override, expected in ((f"tools=['{tmp_path}/my_tools.py:untyped']", "not usable as a tool"),
                               (f"environment={tmp_path}/nope.py:Env", "does not exist")):
        with pytest.raises(RunError) as err:
            build_trainer(load_run_config(str(config), [override]), output_dir=tmp_path / "bad")
        assert expected in str(err.value) and "\n" not in str(err.value)
    # A built-in agent task brings its own tools when the config names none.
    plain = load_run_config(str(config), ["tools=null", "environment=null"])
    assert [t.__name__ for t in build_trainer(plain, output_dir=tmp_path / "task").trainer.tools] == ["price", "calc"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_agent_quickstart_fast_runs_rlsd_and_grpo_with_tools(tmp_path, capsys):
    import json

    from rlsd.cli import main

    out = tmp_path / "qs"
    assert main(["quickstart", "--task", "shop", "--fast", "--steps", "2", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["algorithm"] for row in summary["runs"]] == ["rlsd", "grpo"]
    assert set(summary["tool_calls"]) == {"rlsd", "grpo"}
    for algorithm in ("rlsd", "grpo"):
        records = [json.loads(line) for line in (out / algorithm / "metrics.jsonl").read_text().splitlines()]
        assert any("tools/call_frequency" in r for r in records), "the trainer ran TRL's tool loop"
        assert any("eval/tool_calls_per_episode" in r for r in records), "held-out episodes ran the tools too"
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out / "warmstart")  # the warm start keeps its tool template and parser
    assert saved.response_template is not None and "<call>" in saved.chat_template
    assert "Tool calls per held-out episode, rlsd" in (out / "summary.md").read_text()


class ObservedShop(Shop):
    """An environment whose reset() adds an observation to the prompt."""

    def reset(self, **row):
        super().reset(**row)
        return " Budget: 500."


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


def test_agent_evaluation_plays_greedy_episodes_with_the_tools(tool_model_dir, capsys):
    from rlsd.cli import main
    from rlsd.evaluate import evaluate
    from rlsd.tasks import get_task

    task = get_task("shop")
    tokenizer = build_tool_tokenizer()
    rows = task.make_rows(6, seed=1, split="test")
    rows.append({"prompt": [{"role": "user", "content": "Cost of 3 sofa?"}], "answer": "1", "solution": ""})

    class ScriptedModel(torch.nn.Module):
        """`generate` replaced by the scripted policy; the episode loop, tools and scoring are the real ones."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.policy = ScriptedPolicy(tokenizer, seed=1, use_calc=True)

        def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
            replies, _ = self.policy([ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)], None,
                                     None, 1)
            width = max(len(r) for r in replies)
            padded = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in replies]
            return torch.cat([input_ids, torch.tensor(padded)], dim=1)

    metrics = evaluate(ScriptedModel(), tokenizer, rows, task.reward, tools=task.tools, max_new_tokens=200)
    records = metrics["records"]
    assert metrics["tool_calls_per_episode"] == pytest.approx(13 / 7), "lookup and calculation; one failed lookup"
    assert metrics["tool_errors_per_episode"] == pytest.approx(1 / 7), "the unknown item's lookup failed"
    assert "no item 'sofa'" in records[-1]["completion"] and not records[-1]["correct"]
    assert all(rec["completion"].count("<|im_start|>tool") == 2 for rec in records[:-1])
    assert metrics["accuracy"] == sum(r["extracted"] == r["answer"] for r in records) / len(rows) > 0

    # An environment: a fresh instance per row, its observation in the prompt, its method as the tool.
    env_rows = make_rows()
    env_model = ScriptedModel()
    env_model.policy = ScriptedPolicy(tokenizer, seed=2)
    metrics = evaluate(env_model, tokenizer, env_rows, reward, environment_factory=ObservedShop, max_new_tokens=200)
    assert metrics["tool_calls_per_episode"] == 1 and metrics["tool_errors_per_episode"] == 0
    assert all("Budget: 500." in rec["prompt"] and "Tools: price(item)" in rec["prompt"] for rec in metrics["records"])
    assert metrics["accuracy"] == sum(r["extracted"] == r["answer"] for r in metrics["records"]) / len(env_rows) > 0

    # `rlsd eval --task shop` scores agent episodes too (a random tiny model: few or no valid calls).
    assert main(["eval", "--model", tool_model_dir, "--task", "shop", "--limit", "3", "--max-new-tokens", "24"]) == 0
    assert "tool_calls_per_episode" in capsys.readouterr().out
