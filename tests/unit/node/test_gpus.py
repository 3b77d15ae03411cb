"""nvidia-smi CSV parsing."""

from __future__ import annotations

from nebula_node.gpus import parse_nvidia_smi

SAMPLE = """\
0, NVIDIA H100 80GB HBM3, 81559, 1024
1, NVIDIA H100 80GB HBM3, 81559, 70211
2, NVIDIA A100-SXM4-40GB, 40960, [N/A]
"""


def test_parse_nvidia_smi():
    gpus = parse_nvidia_smi(SAMPLE)
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[1].memory_total_mb == 81559 and gpus[1].memory_used_mb == 70211
    assert gpus[2].memory_used_mb == 0


def test_parse_nvidia_smi_ignores_noise_and_commas_in_names():
    text = "No devices were found\n\n3, Tesla, weird name, 16000, 12\n"
    gpus = parse_nvidia_smi(text)
    assert len(gpus) == 1
    assert gpus[0].index == 3 and gpus[0].name == "Tesla, weird name"
    assert gpus[0].memory_total_mb == 16000 and gpus[0].memory_used_mb == 12
    assert parse_nvidia_smi("") == []
