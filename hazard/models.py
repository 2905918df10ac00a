"""Load the causal LM under study: a local HF directory, a GGUF file, a hub id, or a tiny random model.

kvpress hooks attention layers of Qwen2/Llama-style models, so those are the architectures the tiny
factory builds for tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hazard.errors import HazardError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ChatML, as used by Qwen2.5 and SmolLM2: the tiny tokenizer gets it too so prompts look alike.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")


@dataclass
class ModelConfig:
    """Which model to load.

    Parameters
    ----------
    path : str
        A local HF model directory, a directory holding ``gguf_file``, or a hub id (online only).
    gguf_file : str, optional
        GGUF file name inside ``path``; its weights are dequantised once and cached as safetensors.
    tiny : str, optional
        ``"qwen2"`` or ``"llama"``: build a tiny randomly initialised model (tests, CPU smoke runs).
    dtype : str
        ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``, ``float64``.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
    attn_implementation : str
        ``sdpa`` (default) or ``eager``; the attention probe works with both.
    name : str, optional
        Label written into traces; defaults to the path's last component.
    seed : int
        Initialisation seed of the tiny model.
    """

    path: str = ""
    gguf_file: str | None = None
    tiny: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    name: str | None = None
    seed: int = 0

    def label(self) -> str:
        if self.name:
            return self.name
        if self.tiny:
            return f"tiny-{self.tiny}"
        return Path(self.gguf_file or self.path.rstrip("/")).stem


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise HazardError(f"model.dtype {dtype!r} is unknown; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with ChatML special tokens, built in memory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # alphabet() comes out of a Rust hash set, in a different order per call: sort it, or every tokenizer
    # built in one process maps bytes to different ids.
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>"]}
    )
    fast.chat_template = CHATML
    return fast


def tiny_model(arch: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A 2-layer random model with GQA (4 query heads over 2 KV heads), vocab sized for ``tiny_tokenizer``."""
    common = dict(
        vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, eos_token_id=256, pad_token_id=257,
        bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise HazardError(f"model.tiny {arch!r} is unknown; use qwen2 or llama")
    return model.to(dtype).eval()


def save_tiny(path: str | os.PathLike, arch: str = "qwen2", seed: int = 0) -> Path:
    """Write a tiny model + tokenizer as an ordinary HF directory (for CLI-level tests)."""
    path = Path(path)
    tiny_model(arch, seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _converted_dir(cfg: ModelConfig, gguf: Path) -> Path:
    # Dequantising GGUF takes a minute for the 0.5B: do it once per file and dtype.
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("HAZARD_CACHE", Path.home() / ".cache" / "hazard")) / "converted"
    return root / f"{gguf.stem}-{key}"


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, each GGUF file's metadata is parsed once.

    transformers builds a GGUF model's config, its weights, the tokenizer's config and the tokenizer each from a
    fresh ``gguf.GGUFReader``, which parses the whole metadata (Qwen2.5's 151k-token vocabulary: ~6 s on this CPU)
    every time, once under a relative path. Here readers are shared by resolved path (they only read their memory
    map), and ``gguf.GGUFReader`` is itself again on leaving the block.
    """
    import gguf

    reader = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def shared(path, mode: str = "r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = reader


def convert_gguf(gguf: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Dequantise a GGUF file into an ordinary HF folder ``out`` (weights in ``dtype``, config, tokenizer),
    written whole under ``out``.tmp, then renamed. What ``gpu/setup.sh`` runs once per device machine."""
    gguf, out = Path(gguf), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # of a conversion that was killed
    with gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def _load_gguf(cfg: ModelConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    gguf = Path(cfg.path) / cfg.gguf_file
    if not gguf.is_file():
        raise HazardError(f"model.gguf_file: {gguf} does not exist; fetch it (../shared/tools/models.py fetch)")
    out = _converted_dir(cfg, gguf)
    if not (out / "config.json").is_file():
        convert_gguf(gguf, out, dtype)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, attn_implementation=cfg.attn_implementation)
    return model, AutoTokenizer.from_pretrained(out)


def _fix_tokenizer(tok) -> None:
    # SmolLM2's GGUF tokenizer prepends a BOS that the chat template already provides.
    if hasattr(tok, "add_bos_token") and "<|im_start|>" in tok.get_vocab():
        tok.add_bos_token = False
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHATML


def end_token_ids(tok, model: PreTrainedModel) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos, the model's eos, and chat end markers."""
    vocab = tok.get_vocab()
    ids = {vocab[t] for t in END_TOKENS if t in vocab}
    for e in (tok.eos_token_id, model.generation_config.eos_token_id):
        if isinstance(e, int):
            ids.add(e)
        elif e is not None:
            ids.update(e)
    return sorted(ids)


def load_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load model and tokenizer on the configured device, in eval mode."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.path.startswith("~"):
        cfg.path = os.path.expanduser(cfg.path)
    if cfg.tiny:
        model, tok = tiny_model(cfg.tiny, cfg.seed, dtype), tiny_tokenizer()
    elif not cfg.path:
        raise HazardError("model.path is empty; give a local model directory, a GGUF directory or a hub id")
    elif cfg.gguf_file:
        model, tok = _load_gguf(cfg, dtype)
    else:
        local = Path(cfg.path)
        if not local.exists() and (cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") != 1):
            raise HazardError(f"model.path: {cfg.path} does not exist")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation
            )
            tok = AutoTokenizer.from_pretrained(cfg.path)
        except OSError as e:
            raise HazardError(f"model.path: cannot load {cfg.path!r} ({str(e).splitlines()[0]})") from None
    _fix_tokenizer(tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(device).eval(), tok
