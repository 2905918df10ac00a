import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# The decode-attention kernel (Triton) runs on CPU tensors in Triton's interpreter; set before any import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hazard.models import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def model64(request):
    """Tiny random model in float64, so greedy argmax never hinges on rounding."""
    return tiny_model(request.param, seed=1, dtype=torch.float64)


@pytest.fixture
def gsm8k_dir(tmp_path):
    """A four-problem GSM8K-format folder."""
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
            for a, b in [(3, 4), (10, 5), (7, 8), (1, 1)]]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path
