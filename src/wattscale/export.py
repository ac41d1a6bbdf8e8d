"""Export a finished run's final weights as a Hugging Face LlamaForCausalLM checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from wattscale.errors import StoreError
from wattscale.hf import export_hf
from wattscale.model import Llama, ModelConfig
from wattscale.store import open_store


def export_run_to_hf(store_url: str, run_id: str, out_dir: Path) -> Path:
    """Load run `run_id`'s final weights and write config.json, model.safetensors and tokenizer.json."""
    with open_store(store_url) as store:
        record = store.get_run(run_id)
    if record is None:
        raise StoreError(f"run_id: no run {run_id!r} in the store; see `wattscale runs`")
    if record["status"] != "finished":
        raise StoreError(f"run_id: run {run_id} is {record['status']}, not finished; finish it first")
    run_dir = Path(record["run_dir"])
    weights_path = run_dir / "final" / "model.safetensors"
    if not weights_path.is_file():
        raise StoreError(f"run_id: final weights of run {run_id} are missing at {weights_path}")
    config = ModelConfig.from_dict(json.loads((run_dir / "final" / "model_config.json").read_text()))
    model = Llama(config)
    model.load_state_dict(load_file(str(weights_path)))
    tokenizer = run_dir / "tokenizer.json"
    return export_hf(model, out_dir, tokenizer if tokenizer.is_file() else None)
