"""LoRA students: merged weights equal peft's merge; a LoRA job trains adapters only and exports either."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from kubedistill.api import parse_job
from kubedistill.api.spec import LoraSpec
from kubedistill.runtime.models.loading import load_causal_lm
from kubedistill.runtime.student.lora import apply_lora, merged_weights, scaling
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import TinyWorld, job_manifest


def test_streamed_merge_equals_peft_merge_and_unload(tiny: TinyWorld) -> None:
    spec = LoraSpec(rank=4, alpha=8)
    model = apply_lora(load_causal_lm(str(tiny.student)), spec)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # peft starts B at zero, which would make any merge look right
    ours = dict(merged_weights(model.named_parameters(), scaling(spec)))
    theirs = dict(model.merge_and_unload().named_parameters())
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-6, atol=1e-6)


def test_an_incomplete_layer_is_an_error_not_a_silent_drop() -> None:
    pieces = [("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight", torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="incomplete LoRA layers"):
        list(merged_weights(pieces, 1.0))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(("export", "replicas"), [("merged", 2), ("adapter", 1)])
def test_a_lora_job_trains_the_adapters_and_exports_them(
    tiny: TinyWorld, tmp_path: Path, export: str, replicas: int
) -> None:
    """Merged from adapters sharded over two FSDP2 ranks, and saved as adapters alone from one."""
    manifest = job_manifest(
        tiny,
        "lora-test",
        student={"replicas": replicas, "lora": {"rank": 4, "alpha": 8, "export": export}},
        training={"learningRate": 3e-2},
    )
    options = RunOptions(
        output_dir=tmp_path, stop_after_steps=3, metrics_port=0, progress=False, print_summary=False
    )
    Trainer(parse_job(manifest), options).run()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]

    base = load_causal_lm(str(tiny.student))
    if export == "adapter":
        adapter = load_file(tmp_path / "adapter_model.safetensors")
        assert adapter and all("lora_" in name for name in adapter)
        model = PeftModel.from_pretrained(base, tmp_path).merge_and_unload()
    else:
        assert not (tmp_path / "adapter_model.safetensors").exists()
        model = load_causal_lm(str(tmp_path))
    trained = dict(model.named_parameters())
    original = dict(load_causal_lm(str(tiny.student)).named_parameters())
    changed = {name for name, value in trained.items() if not torch.equal(value, original[name])}
    assert changed, "the adapters changed nothing"
    assert all(("proj" in name) for name in changed), f"only adapted layers may change: {changed}"


def test_adapters_go_on_a_vision_language_models_language_model_only(tmp_path: Path) -> None:
    from kubedistill.runtime.demo.tiny import build_vlm_tokenizer, save_tiny_vlm
    from kubedistill.runtime.models.vision import vision_tower

    model = load_causal_lm(str(save_tiny_vlm(tmp_path / "vlm", build_vlm_tokenizer(["a picture of a cat"]))))
    adapted = apply_lora(model, LoraSpec(rank=4, alpha=8))
    lora = [name for name, _ in adapted.named_parameters() if "lora_A" in name]
    assert lora and all(".visual." not in name for name in lora), lora
    tower = vision_tower(adapted.get_base_model())
    assert tower is not None and any(isinstance(m, torch.nn.Linear) for m in tower.modules())
