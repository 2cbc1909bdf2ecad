"""Derive CLIP's vocab.json and merges.txt from open_clip's bundled BPE file.

The CLIP tokenizer used by every Stable Diffusion text encoder is fully
determined by OpenAI's BPE merge list, which the ``open-clip-torch`` package
ships as ``bpe_simple_vocab_16e6.txt.gz``.  This script rebuilds the files
``transformers.CLIPTokenizer`` reads, so the repository can ship them and no
code path ever fetches a tokenizer from a hub.

Usage:  python tools/derive_clip_tokenizer.py webui/models/configs/clip_tokenizer
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def derive(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    # CLIP uses the merges between the header line and entry 49152 - 256 - 2 + 1.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def main() -> None:
    import open_clip  # only needed to locate the bundled BPE file

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    derive(bpe, Path(sys.argv[1]))


if __name__ == "__main__":
    main()
