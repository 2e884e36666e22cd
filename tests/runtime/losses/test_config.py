from kubedistill.api.spec import DistillationSpec
from kubedistill.runtime.losses import KDConfig


def test_from_spec_carries_every_loss_setting() -> None:
    spec = DistillationSpec(
        loss="akl",
        temperature=2.5,
        kd_ratio=0.7,
        jsd_beta=0.2,
        skew_lambda=0.3,
        adaptive_alpha=0.6,
        hrl_top_k=3,
        loss_chunk_size=256,
    )
    assert KDConfig.from_spec(spec) == KDConfig(
        loss="akl",
        temperature=2.5,
        kd_ratio=0.7,
        jsd_beta=0.2,
        skew_lambda=0.3,
        adaptive_alpha=0.6,
        hrl_top_k=3,
        chunk_size=256,
    )


def test_defaults_are_those_of_an_empty_manifest() -> None:
    assert KDConfig() == KDConfig.from_spec(DistillationSpec())
