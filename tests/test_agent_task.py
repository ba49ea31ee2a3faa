"""The built-in agent task `shop`, its warm-start episodes, agent evaluation, run configs and the agent quickstart."""

import pytest
import torch
from agent_helpers import (ObservedShop, ScriptedPolicy, agent_trainer, make_rows, reward,
                           tool_model_dir)  # noqa: F401 (fixture)

from rlsd.tasks.tiny_tools import build_tool_tokenizer


def test_shop_task_needs_its_tools_and_its_worked_episode_replays_to_the_answer():
    from rlsd.agents.rollout import run_tool_calls
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
    from rlsd.agents.rollout import sft_example
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
    from rlsd.app.run_config import load_run_config
    from rlsd.app.run import RunError, build_trainer

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
@pytest.mark.timeout(2400)  # a safety net for a loaded machine
def test_agent_quickstart_fast_runs_rlsd_and_grpo_with_tools(tmp_path, capsys):
    import json

    from rlsd.app.cli import main

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


def test_agent_evaluation_plays_greedy_episodes_with_the_tools(tool_model_dir, capsys):
    from rlsd.app.cli import main
    from rlsd.app.evaluate import evaluate
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


def test_shipped_agent_config_and_examples_build_a_trainer(tool_model_dir, tmp_path):
    from pathlib import Path

    from rlsd.app.run_config import load_run_config
    from rlsd.app.run import build_trainer

    root = Path(__file__).resolve().parents[1]
    config = str(root / "configs" / "agent-cpu.yaml")
    common = [f"model={tool_model_dir}", "task_train_size=8", "task_eval_size=4", "eval_every=0", "samples_every=0",
              "per_device_train_batch_size=4", "num_generations=4", "use_cpu=true", "report_to=[]",
              "save_strategy=no"]
    examples = root / "examples" / "agents"
    custom = [f"tools=['{examples}/my_tools.py:calculator', '{examples}/my_tools.py:lookup']",
              f"environment={examples}/my_env.py:ShopEnv"]
    trainer = build_trainer(load_run_config(config, common + custom), output_dir=tmp_path / "a").trainer
    assert {t.__name__ for t in trainer.tools} == {"calculator", "lookup", "price"}
    assert trainer.args.algorithm == "rlsd"
    assert [t.__name__ for t in build_trainer(load_run_config(config, common),
                                              output_dir=tmp_path / "b").trainer.tools] == ["price", "calc"]


def test_full_agent_quickstart_warm_start_is_deterministic_on_one_thread_and_text_tasks_keep_their_sizes():
    from rlsd.app.quickstart import AGENT_THREADS, QUICKSTART_THREADS, _agent_sizes, reproducible_warm_start

    full = reproducible_warm_start("shop", fast=False)
    assert full["num_threads"] == AGENT_THREADS == 1 and full["deterministic"] is True
    assert "fixed_steps" not in full  # band-stopped: it entered the 0.20-0.50 band at step 350 (benchmarks/RESULTS.md)
    sizes = _agent_sizes("shop", fast=False)
    assert sizes["warm_start"]["target_accuracy"] == (0.2, 0.5) and sizes["warm_start"]["hidden_size"] == 64
    assert (sizes["batch"], sizes["generations"], sizes["eval_rows"]) == (32, 8, 50)
    assert _agent_sizes("shop", fast=True)["warm_start"]["max_steps"] == 60
    assert _agent_sizes("arithmetic", fast=False) is None and _agent_sizes("arithmetic", fast=True) is None
    assert reproducible_warm_start("arithmetic", fast=False)["num_threads"] == QUICKSTART_THREADS
