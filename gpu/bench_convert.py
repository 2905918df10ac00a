"""The device's one-off GGUF -> bf16 conversion: transformers' own calls against ``hazard.models.convert_gguf``
(the same calls with the file's metadata parsed once), on this machine.

    python gpu/bench_convert.py ~/.cache/hazard-models/qwen2.5-coder-1.5b-instruct.gguf \
        --out gpu/results/bench_convert.json

``gpu/setup.sh`` converts the 1.5B on every fresh device machine (~123 s of each hold's device time before
this). transformers builds the config, the weights, the tokenizer's config and the tokenizer each from a fresh
``gguf.GGUFReader``, which parses the whole metadata every time (the 151k-token vocabulary). Each way runs
``--repeats`` times in a fresh process, alternating; the script checks that both write the same files (sha256
of every file) and writes the seconds of each run. No timing assertion lives in a test.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import transformers

from hazard.collect import _git_sha
from hazard.traces import write_json

PLAIN = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), sys.argv[2]
AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16).save_pretrained(out)
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
"""
ONCE = "import sys; from hazard.models import convert_gguf; convert_gguf(*sys.argv[1:])"


def run(code: str, gguf: Path, out: Path) -> tuple[float, dict[str, str]]:
    """Seconds of one conversion in a fresh process, and the sha256 of each file it wrote."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(gguf), str(out)], check=True,
                   env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True)
    seconds = time.perf_counter() - start
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.iterdir())}
    shutil.rmtree(out)
    return seconds, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("gpu/results/bench_convert.json"))
    args = parser.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"bench_convert: {args.gguf} is not a file; fetch it (../shared/tools/models.py fetch)")
    seconds: dict[str, list[float]] = {"transformers": [], "convert_gguf": []}
    files: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, code in (("transformers", PLAIN), ("convert_gguf", ONCE)):
                t, digests = run(code, args.gguf, Path(tmp) / name)
                seconds[name].append(round(t, 1))
                files.setdefault(name, digests)
                print(f"{name}: {t:.1f} s", flush=True)
    same = files["transformers"] == files["convert_gguf"]
    best = {k: min(v) for k, v in seconds.items()}
    result = {
        "gguf": args.gguf.name, "gguf_bytes": args.gguf.stat().st_size, "repeats": args.repeats,
        "seconds": seconds, "best_seconds": best,
        "saved_seconds": round(best["transformers"] - best["convert_gguf"], 1),
        "same_files": same, "files": files["convert_gguf"],
        "hardware": f"CPU ({platform.machine()}, {os.cpu_count()} cores)", "python": platform.python_version(),
        "transformers_version": transformers.__version__, "gguf_version": version("gguf"),
        "git_sha": _git_sha(),
    }
    write_json(args.out, result)
    print(f"same files: {same}; best {best['transformers']} s against {best['convert_gguf']} s -> {args.out}")
    if not same:
        sys.exit("bench_convert: the two conversions wrote different files")


if __name__ == "__main__":
    main()
