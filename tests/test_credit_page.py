"""Per-token credit records (`credit.jsonl`) from real short runs, and the `rlsd inspect` page rendered in Chromium."""

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from conftest import digit_reward, make_dataset, tiny_config

from rlsd import RLSDTrainer
from rlsd.credit import maths as credit
from rlsd.app.inspect import clip_summary, colour, render_page
from rlsd.credit.records import CREDIT_FILE, CreditRecorder, load_credit_records


def short_run(model_dir, tmp_path, recorder=None, **config):
    args = tiny_config(tmp_path, max_steps=2, **config)
    trainer = RLSDTrainer(model=model_dir, reward_funcs=digit_reward, args=args, train_dataset=make_dataset())
    CreditRecorder(trainer, args.output_dir, every_n_steps=2, **(recorder or {}))
    trainer.train()
    return args.output_dir


@pytest.fixture(scope="module")
def rlsd_run(tiny_model_dir, tmp_path_factory):
    return short_run(tiny_model_dir, tmp_path_factory.mktemp("credit-rlsd"), algorithm="rlsd", rlsd_eps_w=0.5,
                     rlsd_lambda=0.7, privileged_fields=["answer", "solution"])


def test_records_hold_tokens_rewards_and_per_token_rlsd_signals(rlsd_run):
    records = load_credit_records(rlsd_run)
    assert sorted({r["step"] for r in records}) == [1, 2]  # step 1 and every 2nd
    for record in records:
        assert record["algorithm"] == "rlsd" and record["color"] == "weight" and record["center"] == 1.0
        assert record["params"] == {"lambda": 0.7, "eps_w": 0.5}
        assert "What is" in record["prompt"] and "ZQXJ" not in record["prompt"]  # the student's prompt
        assert record["reference"]["answer"].startswith("ZQXJ") and "solution" in record["reference"]
        assert len(record["completions"]) == 4  # one whole group
        for completion in record["completions"]:
            assert 0 < len(completion["tokens"]) <= 12 and completion["reward"] is not None
            if completion["advantage"] != 0:
                assert set(completion["signals"]) == {"delta", "weight", "token_advantage"}
                assert all(len(v) == len(completion["tokens"]) for v in completion["signals"].values())
    assert any(c["advantage"] != 0 for r in records for c in r["completions"])


def test_stored_weights_equal_credit_recomputed_from_stored_delta(rlsd_run):
    checked = 0
    for record in load_credit_records(rlsd_run):
        lam, eps_w = record["params"]["lambda"], record["params"]["eps_w"]
        for completion in record["completions"]:
            adv = completion["advantage"]
            if adv == 0:
                continue
            signals = {k: torch.tensor(v, dtype=torch.float64).unsqueeze(0) for k, v in completion["signals"].items()}
            delta = signals["delta"]
            expected, _ = credit.rlsd_token_advantages(torch.tensor([adv], dtype=torch.float64), delta,
                                                       torch.zeros_like(delta), torch.ones_like(delta), lam, eps_w)
            # values are stored to 4 significant digits
            torch.testing.assert_close(signals["token_advantage"], expected, rtol=2e-3, atol=1e-4)
            torch.testing.assert_close(signals["token_advantage"] / adv, (1 - lam) + lam * signals["weight"],
                                       rtol=2e-3, atol=1e-4)
            weight = torch.exp(torch.sign(torch.tensor(adv)) * delta).clamp(1 - eps_w, 1 + eps_w)
            torch.testing.assert_close(signals["weight"], weight, rtol=2e-3, atol=1e-4)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("algorithm", ["opsd", "grpo+opsd"])
def test_sampled_token_distillation_records_its_signal(tiny_model_dir, tmp_path, algorithm):
    run_dir = short_run(tiny_model_dir, tmp_path, algorithm=algorithm, distill_divergence="sampled_token")
    records = load_credit_records(run_dir)
    assert records and all(r["color"] == "teacher_minus_student" and r["center"] == 0.0 for r in records)
    completion = records[0]["completions"][0]
    assert len(completion["signals"]["teacher_minus_student"]) == len(completion["tokens"])
    assert "teacher - student" in render_page(records)


def test_records_are_bounded_and_grpo_records_tokens_without_signals(tiny_model_dir, tmp_path):
    run_dir = short_run(tiny_model_dir, tmp_path, algorithm="grpo", recorder={"max_groups": 1, "max_tokens": 5},
                        per_device_train_batch_size=8)  # two groups per step, one kept
    records = load_credit_records(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["algorithm"] == "grpo" and "color" not in record
        assert len(record["completions"]) == 4 and any(c["truncated"] for c in record["completions"])
        for completion in record["completions"]:
            assert len(completion["tokens"]) <= 5 and completion["signals"] == {}
    assert "No per-token signal recorded" in render_page(records)


def test_clip_summary_counts_clipped_weights_by_side_and_position():
    record = {"params": {"eps_w": 0.2}, "completions": [
        {"advantage": 1.0, "tokens": list("abcdef"), "signals": {"weight": [1.2, 1.0, 1.0, 1.0, 1.0, 0.8]}},
        {"advantage": -1.0, "tokens": list("xyz"), "signals": {"weight": [1.0, 1.2, 1.2]}},
        {"advantage": 0.0, "tokens": list("q"), "signals": {"weight": [1.2]}},  # A = 0: the teacher does not act
    ]}
    summary = clip_summary([record])
    assert summary["correct"] == {"tokens": 6, "clip_low": 1, "clip_high": 1}
    assert summary["wrong"] == {"tokens": 3, "clip_low": 0, "clip_high": 2}
    assert summary["position"] == {"first": 0.25, "middle": 0.25, "last": 0.5}
    assert colour(1.0, 1.0, 0.2) == "#ffffff" and colour(1.2, 1.0, 0.2) != colour(0.8, 1.0, 0.2)


class _PageDom(HTMLParser):
    """Collects, per completion block, its declared token count and its coloured token spans."""

    def __init__(self):
        super().__init__()
        self.completions, self.legend, self.images = [], False, 0
        self._depth = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if attrs.get("id") == "legend":
            self.legend = True
        if tag in ("img", "link") or (tag == "script" and attrs.get("src")):
            self.images += 1  # any external resource
        if "completion" in classes:
            self.completions.append({"n": int(attrs["data-n-tokens"]), "spans": [], "titles": []})
        if tag == "span" and "tok" in classes:
            self.completions[-1]["spans"].append(attrs.get("style", ""))
            self.completions[-1]["titles"].append(attrs.get("title", ""))


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_inspect_page_renders_in_headless_chromium_with_one_span_per_token(rlsd_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium); the browser test needs one")
    page, png = tmp_path / "page.html", tmp_path / "group.png"
    from rlsd.app.cli import main

    assert main(["inspect", rlsd_run, "--out", str(page), "--png", str(png)]) == 0
    assert png.stat().st_size > 5000  # the README picture of one group
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    parsed = _PageDom()
    parsed.feed(dom)
    recorded = [c for r in load_credit_records(rlsd_run) for c in r["completions"]]
    assert parsed.legend and parsed.images == 0
    # one completion block per recorded completion, one span per recorded token (the page orders groups itself)
    assert sorted(len(c["spans"]) for c in parsed.completions) == sorted(len(c["tokens"]) for c in recorded)
    assert all(c["n"] == len(c["spans"]) for c in parsed.completions)
    styles = {s for c in parsed.completions for s in c["spans"]}
    assert all("background:#" in s for s in styles) and len(styles) > 3  # coloured, not one flat colour
    assert any("weight=" in t and "delta=" in t and "token_advantage=" in t for c in parsed.completions
               for t in c["titles"])
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1000,800", page.as_uri()],
                   capture_output=True, timeout=600, check=True)
    assert shot.stat().st_size > 5000


def test_report_links_the_credit_page(rlsd_run, tmp_path):
    from rlsd.app.report import report

    written = report([rlsd_run], tmp_path / "report")
    assert [p.name for p in written["credit_pages"]] == ["credit-out.html"]  # named by the run's label
    assert "(credit-out.html)" in written["markdown"].read_text()
    assert written["credit_pages"][0].read_text().count('class="tok"') == sum(
        len(c["tokens"]) for r in load_credit_records(rlsd_run) for c in r["completions"])


def test_inspect_missing_records_and_unknown_step_are_one_line_errors(rlsd_run, tmp_path):
    from rlsd.app.cli import main

    assert main(["inspect", str(tmp_path)]) == 2
    assert main(["inspect", rlsd_run, "--step", "99"]) == 2
    assert (tmp_path / CREDIT_FILE).exists() is False
    json.dumps(load_credit_records(rlsd_run))  # plain JSON all the way
