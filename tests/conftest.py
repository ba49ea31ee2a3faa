"""Shared fixtures: a tiny local model/tokenizer and a small dataset. Nothing is downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from rlsd.tasks.tiny import save_tiny_model  # noqa: E402

MARKER = "ZQXJ"  # a string no prompt contains: if it reaches the student, privileged text leaked


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-model"), hidden_size=32, num_layers=2, num_heads=2))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """A larger tiny model with the same tokenizer (the OPD teacher)."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-teacher"), hidden_size=64, num_layers=2, num_heads=2))


def make_dataset(n=8, chat=True):
    rows = []
    for i in range(n):
        question = f"What is {i}+{i + 1}?"
        rows.append({
            "prompt": [{"role": "user", "content": question}] if chat else question,
            "answer": f"{MARKER}{2 * i + 1}",
            "solution": f"{i}+{i + 1}={2 * i + 1}",
        })
    return Dataset.from_list(rows)


def digit_reward(prompts, completions, **kwargs):
    """A dense toy reward (share of digits) so that groups have non-zero advantages."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def tiny_config(tmp_path, **overrides):
    from rlsd import RLSDConfig

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return RLSDConfig(**defaults)
