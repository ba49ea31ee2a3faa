"""Image rows: every way a row can carry images ends in TRL's convention (chat prompts + a lazily decoded
`images` column), and every bad image is one `FILE:ROW: field 'image': ...` line."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
import warnings
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from trl.data_utils import prepare_multimodal_messages

from rlsd.data import DatasetError, DatasetWarning, load_dataset


def png(path: Path, color: str = "red", size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(color: str = "blue", size: tuple[int, int] = (5, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DatasetError) as err:
        load_dataset(*args, **kwargs)
    return str(err.value)


def trl_messages(row: dict) -> list:
    """What TRL's GRPOTrainer does with a row (grpo_trainer.py: `images` column -> prepare_multimodal_messages)."""
    return prepare_multimodal_messages(row["prompt"], images=row["images"])


def test_image_column_of_relative_paths_gives_trls_convention_decoded_lazily(tmp_path):
    png(tmp_path / "imgs" / "a.png", "red", (8, 6))
    png(tmp_path / "imgs" / "b.png", "green", (3, 7))
    rows = [{"question": "What colour?", "image": "imgs/a.png", "answer": "red"},
            {"question": "And this one?", "image": "imgs/b.png", "answer": "green", "level": 2}]  # fmt: skip
    train = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))["train"]
    assert train.features["images"] == datasets.List(datasets.Image())
    assert "image" not in train.column_names  # mapped onto `images`, like question -> prompt
    stored = train.data.column("images").to_pylist()  # what the dataset holds: paths, no pixels
    assert stored[0] == [{"bytes": None, "path": str((tmp_path / "imgs" / "a.png").resolve())}]
    row = train[1]
    assert row["prompt"] == [{"role": "user", "content": "And this one?"}] and row["answer"] == "green"
    assert isinstance(row["images"][0], Image.Image) and row["images"][0].size == (3, 7)
    messages = trl_messages(row)
    assert [b["type"] for b in messages[0]["content"]] == ["image", "text"]
    assert messages[0]["content"][0]["image"].size == (3, 7)


def test_images_list_with_placeholders_and_inline_image_blocks(tmp_path):
    for name in ("x", "y", "z"):
        png(tmp_path / f"{name}.png")
    placeholders = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                                                 {"type": "image"}]}]  # fmt: skip
    inline = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "text", "text": "Count"}, {"type": "image", "image": "z.png"}]}]
    rows = [{"prompt": placeholders, "images": ["x.png", "y.png"], "answer": "2"},
            {"prompt": inline, "answer": "1"}]  # fmt: skip
    train = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))["train"]
    first, second = train[0], train[1]
    assert [b["type"] for b in first["prompt"][0]["content"]] == ["image", "text", "image"]
    assert len(first["images"]) == 2 and len(second["images"]) == 1
    assert second["prompt"][1]["content"][1] == {"type": "image", "text": None}  # the path moved to `images`
    assert second["prompt"][0]["content"] == [{"type": "text", "text": "Be brief."}]
    for row in (first, second):
        trl_messages(row)  # TRL's own check: as many images as placeholders


def test_bytes_saved_image_features_and_pil_images(tmp_path):
    table = pa.table({"question": ["a?", "b?"], "answer": ["1", "2"], "image": [png_bytes(), png_bytes("red")]})
    pq.write_table(table, tmp_path / "d.parquet")
    train = load_dataset(tmp_path / "d.parquet")["train"]
    assert train[0]["images"][0].size == (5, 4) and train.data.column("images").to_pylist()[0][0]["path"] is None

    saved = datasets.Dataset.from_dict(
        {"problem": ["p?"], "answer": ["3"], "picture": [str(png(tmp_path / "pic.png", size=(4, 4)))]}
    ).cast_column("picture", datasets.Image())  # any column typed datasets.Image is found
    saved.save_to_disk(str(tmp_path / "saved"))
    train = load_dataset(tmp_path / "saved")["train"]
    assert train[0]["images"][0].size == (4, 4) and "picture" not in train.column_names
    saved.to_parquet(str(tmp_path / "typed.parquet"))  # the Image type travels in the Parquet metadata
    assert load_dataset(tmp_path / "typed.parquet")["train"][0]["images"][0].size == (4, 4)

    in_memory = datasets.Dataset.from_list([{"question": "q?", "answer": "1", "image": Image.new("RGB", (2, 2))}])
    assert load_dataset(in_memory)["train"][0]["images"][0].size == (2, 2)


def test_bad_images_are_one_line_each_and_skip_bad_rows_drops_them(tmp_path):
    png(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(png_bytes(size=(64, 64))[:60])
    (tmp_path / "folder.png").mkdir()
    rows = [
        {"question": "fine", "image": "ok.png", "answer": "1"},
        {"question": "missing", "image": "nope.png", "answer": "1"},
        {"question": "text", "image": "notes.png", "answer": "1"},
        {"question": "cut", "image": "cut.png", "answer": "1"},
        {"question": "dir", "image": "folder.png", "answer": "1"},
        {"question": "url", "image": "https://example.com/a.png", "answer": "1"},
        {"question": "number", "image": 7, "answer": "1"},
        {"question": "second of two", "image": ["ok.png", "nope.png"], "answer": "1"},
        {"question": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "two?"},
                                                   {"type": "image"}]}], "image": ["ok.png"], "answer": "1"},
        {"question": "bad base64", "image": "data:image/png;base64,%%%", "answer": "1"},
        {"question": "device", "image": "/dev/zero", "answer": "1"},
        {"question": "also fine", "image": "ok.png", "answer": "2"},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = error_of(path)
    expected = [
        f"{path}:2: field 'image': no such file: nope.png (looked for {tmp_path / 'nope.png'})",
        f"{path}:3: field 'image': notes.png: not an image file PIL can read",
        f"{path}:4: field 'image': cut.png: corrupt or truncated image",
        f"{path}:5: field 'image': folder.png is a directory, not an image file",
        f"{path}:6: field 'image': https://example.com/a.png is a URL; pass allow_image_urls=True (CLI: --allow-image-urls)",
        f"{path}:7: field 'image': expected a file path, URL, image bytes or a list of them, got int",
        f"{path}:8: field 'image': image 2 of 2: no such file: nope.png",
        f"{path}:9: field 'image': the prompt has 2 image placeholder(s)",
        f"{path}:10: field 'image': a data: URI that is not valid base64",
        f"{path}:11: field 'image': /dev/zero is not a regular file",
    ]
    for line in expected:
        assert line in message, line
    assert message.startswith("10 of 12 rows are invalid") and f"{path}:1:" not in message
    assert all(line.count(":") >= 3 for line in message.splitlines()[1:])  # FILE:ROW: field ...: one line each
    with pytest.warns(DatasetWarning, match="dropped 10 of 12 rows"):
        train = load_dataset(path, skip_bad_rows=True)["train"]
    assert [p[0]["content"] for p in train["prompt"]] == ["fine", "also fine"]


def test_urls_only_with_the_flag_and_downloaded_once(tmp_path):
    served = tmp_path / "www"
    png(served / "remote.png", size=(6, 6))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        rows = [{"question": "remote?", "image": f"{base}/remote.png", "answer": "1"},
                {"question": "gone?", "image": f"{base}/gone.png", "answer": "1"}]  # fmt: skip
        path = write_jsonl(tmp_path / "d.jsonl", rows)
        assert "is a URL; pass allow_image_urls=True" in error_of(path)
        message = error_of(path, allow_image_urls=True)
        assert f"{path}:2: field 'image': cannot download {base}/gone.png" in message and ":1:" not in message
        with pytest.warns(DatasetWarning):
            train = load_dataset(path, allow_image_urls=True, skip_bad_rows=True)["train"]
    finally:
        server.shutdown()
    assert train[0]["images"][0].size == (6, 6)  # kept encoded: no network access after loading


def test_same_text_with_different_images_is_not_a_train_eval_overlap(tmp_path):
    png(tmp_path / "a.png", "red")
    png(tmp_path / "b.png", "blue")
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "Colour?", "image": "a.png", "answer": "red"}])
    held = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Colour?", "image": "b.png", "answer": "blue"},
                                                 {"question": "colour? ", "image": "a.png", "answer": "red"}])  # fmt: skip
    message = error_of(train, eval_path=held)
    assert f"{held}:2: field 'question': same prompt as {train}:1" in message and f"{held}:1:" not in message


def test_run_builds_image_rows_in_trls_convention(tmp_path):
    """`rlsd train` with a JSONL of image rows: what run.build_datasets hands to the trainer."""
    from rlsd.app.run import build_datasets

    png(tmp_path / "a.png")
    rows = [{"question": f"Q{i}?", "image": "a.png", "answer": str(i)} for i in range(3)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    train, eval_rows, _ = build_datasets({"data": {"train": str(data), "eval_fraction": 0.34}}, seed=0)
    assert {"prompt", "images", "answer"} <= set(train.column_names) and len(eval_rows) == 1
    for row in [*train, *eval_rows]:
        assert isinstance(row["prompt"], list) and len(row["images"]) == 1
        assert trl_messages(row)[0]["content"][0]["image"].size == (8, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DatasetWarning: nothing was dropped
        build_datasets({"data": {"train": str(data)}}, seed=0)


def test_rlsd_train_on_a_jsonl_of_image_rows(tmp_path):
    """End to end: `rlsd train` with image rows (paths in content blocks) and a tiny LLaVA, held-out eval too."""
    import yaml

    from rlsd.app.cli import main
    from rlsd.tasks.tiny_vlm import save_tiny_llava

    model = save_tiny_llava(tmp_path / "llava", hidden_size=32, num_layers=2, num_heads=2)
    rows = []
    for i in range(8):
        colour = ["red", "blue"][i % 2]
        png(tmp_path / "imgs" / f"{i}.png", colour, (24, 24))
        content = [{"type": "text", "text": f"Colour {i}?"}, {"type": "image", "path": f"imgs/{i}.png"}]
        rows.append({"prompt": [{"role": "user", "content": content}], "answer": colour})
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "r.py").write_text("def length(prompts, completions, **kw):\n    return [len(str(c)) % 3 / 2 for c in completions]\n")
    config = {
        "model": str(model), "data": {"train": str(data), "eval_fraction": 0.25}, "rewards": [f"{tmp_path / 'r.py'}:length"],
        "eval_every": 2, "eval_max_new_tokens": 4,
        "training": {"algorithm": "rlsd", "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                     "max_completion_length": 8, "learning_rate": 1e-3, "save_strategy": "no", "report_to": [],
                     "seed": 0, "disable_tqdm": True},
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "out")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 2 and all(m["teacher/rows_scored_frac"] > 0 for m in steps)
    assert any("eval/accuracy" in m for m in metrics)


def test_ten_thousand_image_rows_hold_no_decoded_pixels(tmp_path):
    """Images stay paths until a row is read: 10k rows of 64x64 pictures would be 123 MB decoded."""
    for k in range(10):
        png(tmp_path / f"{k}.png", ["red", "blue"][k % 2], (64, 64))
    rows = [{"question": f"Q{i}?", "image": f"{i % 10}.png", "answer": str(i)} for i in range(10_000)]
    train = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))["train"]
    assert train.num_rows == 10_000 and train.data.nbytes < 2_000_000  # paths and text only
    assert train[9_999]["images"][0].size == (64, 64)  # decoded on access
