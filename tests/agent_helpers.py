"""Shared pieces of the agent tests: tools, an environment, a scripted policy and a tiny tool-calling model.

Generation is scripted (a deterministic policy replaces `_generate_single_turn`, the only backend call) so that
every rollout really calls tools; everything else is TRL's and rlsd's own code.
"""

import random
import re

import pytest
from conftest import MARKER, tiny_config
from datasets import Dataset

from rlsd import RLSDTrainer
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

    def __init__(self, tokenizer, seed=0, use_calc=False, call="<call>{name}{args}</call>"):
        self.tokenizer, self.rng, self.use_calc, self.seen = tokenizer, random.Random(seed), use_calc, []
        self.call = call  # how this tokenizer's template writes a tool call

    def __call__(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:
            self.seen.append(list(ids))
            text = self.tokenizer.decode(ids)
            count, item = re.search(r"Cost of (\d+) (\w+)\?", text).groups()
            results = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", text)
            if not results:
                reply = f"Look up {item}." + self.call.format(name="price", args=f'{{"item":"{item}"}}')
            elif self.use_calc and len(results) == 1 and results[0].isdigit():
                reply = "Multiply." + self.call.format(name="calc", args=f'{{"expr":"{count}*{results[0]}"}}')
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


def agent_trainer(model_dir, tmp_path, rows=None, tools=(price,), environment=None, use_calc=False,
                  call="<call>{name}{args}</call>", **config):
    config = {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 120,
              "privileged_fields": ["answer", "solution"], "rlsd_eps_w": 0.5, **config}
    args = tiny_config(tmp_path, **config)
    trainer = RLSDTrainer(model=model_dir, reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(rows or make_rows()), tools=list(tools),
                          environment_factory=environment)
    trainer._generate_single_turn = ScriptedPolicy(trainer.processing_class, use_calc=use_calc, call=call)
    return trainer


def generation_batch(trainer, rows):
    per_prompt = trainer.args.per_device_train_batch_size // trainer.num_generations
    return [dict(row) for row in rows[:per_prompt] for _ in range(trainer.num_generations)]


def contains(ids, pattern):
    ids = list(ids)
    return any(ids[i:i + len(pattern)] == pattern for i in range(len(ids) - len(pattern) + 1))


class ObservedShop(Shop):
    """An environment whose reset() adds an observation to the prompt."""

    def reset(self, **row):
        super().reset(**row)
        return " Budget: 500."
