"""The LLM example's model, made here: a tiny Bloom-family causal LM with a PEFT prompt-tuning adapter.

No hub can be reached at run time, so set-up builds what the article downloads: a tokenizer
trained on a few lines of text, a causal LM of the article's Bloom family with a small config
and random weights, and a prompt-tuning adapter made with ``peft``. The serving code then loads
them through the same ``from_pretrained`` calls as the article's, with the hub switched off.
Generated text is meaningless; the serving path (tokenise, generate, decode) is real.

Layout of the model folder (the InferenceService's storage path)::

    peft-demo/
      adapter_config.json, adapter_model.safetensors   the PEFT adapter (PEFT_MODEL_ID)
      base/                                            the causal LM and its tokenizer
                                                       (PRETRAINED_MODEL_PATH)

Everything is seeded, so every machine builds the same weights. Needs the ``llm`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("msm.samples")

PEFT_DEMO = "peft-demo"
BASE = "base"
"""The base model's folder inside the adapter's; the adapter names it relative to itself."""
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
"""Bloom's special tokens, in Bloom's order: the article's ``eos_token_id=3`` is ``<pad>``."""

# A few lines in the style of the article's data set (tweets, some of them complaints).
CORPUS = (
    "Every day is a new beginning, filled with opportunities and hope.",
    "My package arrived two weeks late and the box was crushed.",
    "Thank you for the quick reply, the problem is solved.",
    "I have been on hold for an hour and nobody answers.",
    "The new update made the app much faster, great work.",
    "My flight was cancelled again and the refund never came.",
    "What a lovely morning for a walk in the park.",
    "The charger stopped working after three days.",
    "Customer service fixed my account in five minutes.",
    "Why does the train always arrive late on Mondays?",
    "Tweet text : Label : complaint no complaint",
    "The weather is sunny and the coffee is hot.",
    "I was charged twice for the same order, please help.",
    "Loving the new season of the show, every episode is better.",
    "The internet has been down since yesterday evening.",
    "A big thank you to the team for the support.",
)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[0]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def build_peft_model(target: Path, *, hidden_size: int = 256, layers: int = 4, heads: int = 8,
                     vocab_size: int = 1024, virtual_tokens: int = 8) -> None:
    """Write the tokenizer, the base causal LM and the prompt-tuning adapter into ``target``."""
    import torch
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import BloomConfig, BloomForCausalLM

    base = target / BASE
    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save_pretrained(base)
    torch.manual_seed(0)
    config = BloomConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, n_layer=layers, n_head=heads,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = BloomForCausalLM(config)
    model.save_pretrained(base)
    peft_config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.RANDOM,
                                     num_virtual_tokens=virtual_tokens)
    get_peft_model(model, peft_config).save_pretrained(target)
    # peft writes the base model's path as it was given; keep it relative to the adapter's folder
    # so that the folder can move (the PVC is mounted elsewhere in a pod).
    cfg_path = target / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (target / "README.md").unlink(missing_ok=True)  # peft's model card template: nothing to say


def ensure_peft_model(directory: Path | str) -> list[Path]:
    """Build ``<directory>/peft-demo`` unless it is there; return what was made."""
    directory = Path(directory)
    target = directory / PEFT_DEMO
    if (target / "adapter_config.json").is_file() and (target / BASE / "config.json").is_file():
        return []
    directory.mkdir(parents=True, exist_ok=True)
    log.info("building the LLM example's model %s", target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{PEFT_DEMO}.", dir=directory))
    try:
        build_peft_model(tmp)
        tmp.chmod(0o755)  # mkdtemp's folder is private; the model is read by the runtime's user
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # a half-built model never shows under its name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [target]


def main(argv: list[str] | None = None) -> int:
    """``python -m placement.local.samples_llm DIR``: build the LLM example's model into DIR."""
    parser = argparse.ArgumentParser(prog="python -m placement.local.samples_llm", description=main.__doc__)
    parser.add_argument("dir", nargs="?", default="examples/llm/models")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    made = ensure_peft_model(Path(args.dir))
    print(f"built {made[0]}" if made else f"the LLM example's model is already in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
