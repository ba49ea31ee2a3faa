"""Image rows: find each row's images, check every one before training, keep them encoded until used.

Where a row's images come from (in the order they appear in the prompt):
- an `images` (list) or `image` column, or `image_column=`, or a column typed `datasets.Image`: file paths
  relative to the data file, `http(s)://` URLs (only with `allow_image_urls=True`), `data:image/...;base64,`
  URIs, encoded bytes, `{"bytes", "path"}` dicts (how `datasets` stores images) or PIL images;
- chat prompts' content blocks `{"type": "image", "image" | "path" | "url": ...}`.

The result follows TRL's GRPOTrainer convention: chat prompts, and an `images` column of
`List(datasets.Image())`, which stores only paths or encoded bytes and decodes an image when its row is read
(a 10k-row dataset never holds 10k decoded images). Blocks that carried an image become `{"type": "image"}`
placeholders, filled by TRL from `images` in order; prompts whose messages are plain text get their
placeholders from TRL (one per image, before the first user message's text).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .columns import Issue, is_arrow, to_list
from .problems import fail
from .source import Source

IMAGE_NAMES = ("images", "image")
URL_HINT = "pass allow_image_urls=True (CLI: --allow-image-urls) to download images"
MAX_DOWNLOAD = 64 << 20
STORAGE = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


@dataclass
class ImageRows:
    """Each row's images as `{"bytes", "path"}` (path: read from disk on access; bytes: encoded file)."""

    column: str | None
    rows: list[list[dict]]

    def identity(self, i: int) -> str:
        parts = [im["path"] or hashlib.sha1(im["bytes"]).hexdigest() for im in self.rows[i]]
        return "|".join(parts)

    def arrow(self, keep: np.ndarray) -> pa.Array:
        return pa.array([r for r, k in zip(self.rows, keep) if k], STORAGE)


def _image_column(src: Source, options: dict) -> str | None:
    explicit = options.get("image_column")
    if explicit is not None:
        if explicit not in src.columns:
            raise fail(src.label, f"no column {explicit!r} (given as the image column); columns: {', '.join(src.columns)}")
        return explicit
    found = next((n for n in IMAGE_NAMES if n in src.columns), None)
    if found is None:  # a column typed datasets.Image (or a list of them), whatever its name
        typed = [n for n, f in src.features.items() if "Image(" in repr(f)]
        found = typed[0] if typed else None
    return found


def _verify(data: bytes | None, path: Path | None) -> str | None:
    """Why PIL cannot use this image, or None. Reads the file (verify() checks its structure) without decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.verify()
    except UnidentifiedImageError:
        return "not an image file PIL can read"
    except Image.DecompressionBombError as exc:
        return f"image too large ({exc})"
    except OSError as exc:
        if exc.errno is not None:  # the file system refused (permissions, I/O error)
            return f"cannot read: {exc.strerror or exc}"
        return f"corrupt or truncated image ({exc})"
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise many types for corrupt files
        return f"corrupt or truncated image ({type(exc).__name__}: {exc})"
    return None


class _Resolver:
    """Turns one image reference into storage (`{"bytes", "path"}`) or a reason it cannot be used."""

    def __init__(self, base_dir: Path | None, allow_urls: bool):
        self.base_dir, self.allow_urls = base_dir, allow_urls
        self.checked: dict[str, str | None] = {}  # resolved path -> problem (each file is verified once)
        self.downloads: dict[str, bytes | str] = {}

    def prefetch(self, urls: set[str]) -> None:
        import urllib.request

        def get(url: str) -> bytes | str:
            try:
                with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the user opted in
                    data = response.read(MAX_DOWNLOAD + 1)
                return data if len(data) <= MAX_DOWNLOAD else f"cannot download {url}: over {MAX_DOWNLOAD >> 20} MiB"
            except Exception as exc:  # noqa: BLE001 - network errors of every kind
                return f"cannot download {url}: {exc}"

        todo = sorted(u for u in urls if u not in self.downloads)
        with ThreadPoolExecutor(max_workers=8) as pool:
            self.downloads.update(zip(todo, pool.map(get, todo)))

    def __call__(self, ref: Any) -> dict | str:
        if isinstance(ref, dict) and ("bytes" in ref or "path" in ref):
            if ref.get("bytes") is not None:
                return self._bytes(ref["bytes"])
            ref = ref.get("path")
            if ref is None:
                return "an image with neither bytes nor a path"
        if isinstance(ref, (bytes, bytearray, memoryview)):
            return self._bytes(bytes(ref))
        if isinstance(ref, str):
            if ref.startswith(("http://", "https://")):
                if not self.allow_urls:
                    return f"{ref:.80} is a URL; {URL_HINT}"
                got = self.downloads.get(ref)
                return got if isinstance(got, str) else self._bytes(got)
            if ref.startswith("data:image/"):
                try:
                    return self._bytes(base64.b64decode(ref.split(",", 1)[1], validate=True))
                except (IndexError, binascii.Error):
                    return "a data: URI that is not valid base64"
            return self._path(ref)
        if type(ref).__module__.startswith("PIL."):
            buffer = io.BytesIO()
            ref.save(buffer, format="PNG")
            return {"bytes": buffer.getvalue(), "path": None}
        return f"expected a file path, URL, image bytes or a list of them, got {type(ref).__name__}"

    def _bytes(self, data: bytes) -> dict | str:
        why = _verify(data, None)
        return f"image bytes: {why}" if why else {"bytes": data, "path": None}

    def _path(self, ref: str) -> dict | str:
        if not ref.strip():
            return "empty file path"
        path = Path(ref).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        key = str(path.resolve())
        if key not in self.checked:
            if not path.exists():
                self.checked[key] = f"no such file: {ref} (looked for {path})"
            elif path.is_dir():
                self.checked[key] = f"{ref} is a directory, not an image file"
            elif not path.is_file():  # a FIFO or device would block or never end
                self.checked[key] = f"{ref} is not a regular file"
            else:
                why = _verify(None, path)
                self.checked[key] = f"{ref}: {why}" if why else None
        return self.checked[key] or {"bytes": None, "path": key}


def _payload(block: dict) -> Any:
    return next((block[k] for k in ("image", "path", "url") if block.get(k) is not None), None)


def _urls(values: list, prompts: list) -> set[str]:
    found: set[str] = set()

    def visit(ref: Any) -> None:
        if isinstance(ref, dict):
            ref = ref.get("path") if ref.get("bytes") is None else None
        if isinstance(ref, str) and ref.startswith(("http://", "https://")):
            found.add(ref)

    for value in values:
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            visit(ref)
    for prompt in prompts:
        for block in _image_blocks(prompt):
            visit(_payload(block))
    return found


def _image_blocks(prompt: Any) -> list[dict]:
    if not isinstance(prompt, list):
        return []
    return [
        b for m in prompt if isinstance(m, dict) and isinstance(m.get("content"), list)
        for b in m["content"] if isinstance(b, dict) and b.get("type") == "image"
    ]  # fmt: skip


def _as_blocks(prompt: list, n_images: int) -> list:
    """Text contents -> text blocks; a prompt that had no image blocks gets its placeholders as TRL would add them."""
    placeholders = not _image_blocks(prompt)
    out = []
    for m in prompt:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
            if placeholders and m["role"] == "user":
                content = [{"type": "image"} for _ in range(n_images)] + content
                placeholders = False
        else:
            content = [{"type": "image"} if b.get("type") == "image" else {"type": "text", "text": b["text"]}
                       for b in content]  # fmt: skip
        out.append({"role": m["role"], "content": content})
    return out


def check_images(src: Source, cols: dict, prompts: Any, bad: set[int], options: dict):
    """(ImageRows or None, prompts in TRL's form, issues). `bad`: rows whose prompt already has a problem."""
    column = _image_column(src, options)
    chat_prompts = not is_arrow(prompts) and any(isinstance(p, list) for p in prompts)
    if column is None and not (chat_prompts and any(_image_blocks(p) for p in prompts)):
        return None, prompts, []
    values = to_list(src.columns[column]) if column is not None else [None] * src.size
    field = column or cols["prompt"]
    resolve = _Resolver(src.base_dir, bool(options.get("allow_image_urls")))
    if resolve.allow_urls:
        resolve.prefetch(_urls(values, prompts if chat_prompts else []))
    rows: list[list[dict]] = []
    issues: list[Issue] = []
    for i, value in enumerate(values):
        refs = list(value) if isinstance(value, (list, tuple)) else ([] if value is None else [value])
        prompt = prompts[i] if chat_prompts else None
        blocks = _image_blocks(prompt) if i not in bad else []
        inline = [_payload(b) for b in blocks]
        placeholders = sum(p is None for p in inline)
        if blocks and placeholders != len(refs):
            where = f"{len(refs)} image{'s' * (len(refs) != 1)} in column {column!r}" if column else "no image column"
            issues.append((i, field, f"the prompt has {placeholders} image placeholder(s) ({{'type': 'image'}} "
                                     f"blocks without an image) but the row has {where}"))  # fmt: skip
            rows.append([])
            continue
        pending = iter(refs)
        ordered = [next(pending) if p is None else p for p in inline] if blocks else refs
        images, why = [], None
        for k, ref in enumerate(ordered, start=1):
            got = resolve(ref) if ref is not None else "null image"
            if isinstance(got, str):
                why = f"image {k} of {len(ordered)}: {got}" if len(ordered) > 1 else got
                break
            images.append(got)
        if why:
            issues.append((i, field, why))
        rows.append(images if why is None else [])
    bad = bad | {i for i, _, _ in issues}
    if chat_prompts and any(isinstance(m.get("content"), list) for i, p in enumerate(prompts)
                            if i not in bad and isinstance(p, list) for m in p):  # fmt: skip
        # Arrow needs one content type per column: all text contents become blocks, placeholders as TRL adds them
        prompts = [_as_blocks([{"role": "user", "content": p}] if isinstance(p, str) else p, len(r))
                   if i not in bad else p
                   for i, (p, r) in enumerate(zip(prompts, rows))]  # fmt: skip
    return ImageRows(column, rows), prompts, issues
