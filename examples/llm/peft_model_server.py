"""The article's ``PeftModelServer``: an MLServer model class for a causal LM with a PEFT adapter.

It follows the article's code (section 3.1.1) call for call: ``AutoTokenizer.from_pretrained``,
``PeftConfig.from_pretrained``, ``AutoModelForCausalLM.from_pretrained``,
``PeftModel.from_pretrained``; ``decode_args`` turns the request's BYTES into strings and the
answer back. What differs, each marked "local:" below:

- where the model comes from: the article reads hub ids from ``PRETRAINED_MODEL_PATH`` and
  ``PEFT_MODEL_ID``; here, when those are not set, the InferenceService's own model folder
  (MLServer's ``parameters.uri``) holds the adapter, and its ``base/`` folder the LM and its
  tokenizer (``python -m placement.local.samples_llm`` builds them). So one runtime serves many
  such models, as a multi-model runtime should;
- a base model path that the adapter names relatively is taken relative to the adapter's folder;
- generation stops at the end-of-sequence token the tokenizer defines, if the article's id 3 is
  not in its vocabulary.
"""

import os
from typing import List

import torch
from mlserver import MLModel
from mlserver.codecs import decode_args
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


class PeftModelServer(MLModel):
    async def load(self) -> bool:
        self._load_model()
        self.ready = True
        return self.ready

    @decode_args
    async def predict(self, content: List[str]) -> List[str]:
        return self._predict_outputs(content)

    def _model_folder(self) -> str:
        # local: the model's own folder, from its InferenceService's storage path
        return self.settings.parameters.uri if self.settings.parameters else "."

    def _load_model(self):
        folder = self._model_folder()
        peft_model_id = os.environ.get("PEFT_MODEL_ID") or folder
        model_name_or_path = os.environ.get("PRETRAINED_MODEL_PATH") or os.path.join(folder, "base")
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, local_files_only=True)
        config = PeftConfig.from_pretrained(peft_model_id)
        base = config.base_model_name_or_path
        if base and not os.path.isabs(base) and os.path.isdir(os.path.join(peft_model_id, base)):
            base = os.path.join(peft_model_id, base)  # local: relative to the adapter's folder
        self.model = AutoModelForCausalLM.from_pretrained(base)
        self.model = PeftModel.from_pretrained(self.model, peft_model_id)
        self.model.eval()
        self.text_column = os.environ.get("DATASET_TEXT_COLUMN_NAME", "Tweet text")
        self.eos_token_id = 3 if len(self.tokenizer) > 3 else self.tokenizer.eos_token_id
        return

    def _predict_outputs(self, content: List[str]) -> List[str]:
        output_list = []
        for input in content:
            inputs = self.tokenizer(
                f"{self.text_column} : {input} Label : ",
                return_tensors="pt",
            )
            with torch.no_grad():
                inputs = {k: v for k, v in inputs.items()}
                outputs = self.model.generate(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    max_new_tokens=10, eos_token_id=self.eos_token_id,
                )
                outputs = self.tokenizer.batch_decode(
                    outputs.detach().cpu().numpy(), skip_special_tokens=True)
            output_list.append(outputs[0])
        return output_list
