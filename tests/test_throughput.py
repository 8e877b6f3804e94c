"""The epoch log of a cluster run: the FLOP count of one training step against a hand count, MFU against a stated
peak, and the fields of the epoch record."""

from __future__ import annotations

from test_train_run import tiny_config

from mae import MAEConfig
from mae.train import pretrain
from mae.train.report import read_metrics
from mae.train.throughput import Throughput, known_peak_tflops, step_flops


def hand_count(B: int, L: int, K: int, P: int, D: int, depth: int, Dd: int) -> int:
    """FLOPs (2 per multiply-add) of one loss_only training step of an MAE with a 1-block decoder, by hand.

    Forward: the patch embedding runs on the K visible patches only (a linear P -> D); encoder blocks on T = 1 + K
    tokens (qkv 3D^2, proj D^2, MLP 8D^2 per token, scores and weighted sum 2 T^2 D per block); decoder_embed on T
    tokens; the last (only) decoder block computes keys and values for all N = 1 + L tokens but queries, proj and
    MLP for the M = L - K removed patches; the head on M rows. Backward: twice the forward of each product, except
    the patch embedding, whose input needs no gradient (weight gradient only).
    """
    T, N, M = 1 + K, 1 + L, L - K
    embed = 2 * B * K * P * D
    encoder = depth * (2 * B * T * 12 * D * D + 4 * B * T * T * D)
    decoder = (2 * B * T * D * Dd + 2 * B * N * Dd * 2 * Dd + 2 * B * M * Dd * Dd + 4 * B * M * N * Dd
               + 2 * B * M * Dd * Dd + 2 * B * M * 8 * Dd * Dd + 2 * B * M * Dd * P)
    return 2 * embed + 3 * (encoder + decoder)


def test_the_step_flop_count_matches_a_hand_count():
    config = MAEConfig.from_name("mae_vit_tiny_patch16", img_size=32, patch_size=8, embed_dim=64, depth=2,
                                 num_heads=4, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    counted = step_flops(config, batch_size=3)
    expected = hand_count(B=3, L=16, K=4, P=8 * 8 * 3, D=64, depth=2, Dd=32)
    assert abs(counted - expected) <= 0.03 * expected, (counted, expected)


def test_known_gpus_and_the_mfu_against_a_stated_peak(tmp_path):
    assert known_peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert known_peak_tflops("NVIDIA H200")[0] == 989.0
    assert known_peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert known_peak_tflops("NVIDIA H100 PCIe") is None and known_peak_tflops("Tesla T4") is None
    import torch

    meter = Throughput(torch.device("cpu"), world_size=4, batch_size=8, flops_per_step=2 * 10**12,
                       peak_tflops=10.0, peak_source="--peak-tflops")
    record = meter.epoch(micro_steps=5, seconds=2.0)
    assert record["img_per_s"] == 80.0 and record["img_per_s_per_process"] == 20.0
    assert record["tflops_per_process"] == 5.0 and record["mfu"] == 0.5
    assert "MFU 50.0%" in meter.describe(record) and "process max RSS" in meter.describe(record)


def test_the_epoch_record_carries_the_cluster_fields(tmp_path):
    from test_train_run import write_images

    data = write_images(tmp_path / "imgs", 8)
    result = pretrain(tiny_config(tmp_path, data, epochs=1, peak_tflops=0.5))
    (epoch,) = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    for key in ("img_per_s", "img_per_s_per_process", "data_wait", "peak_memory_gb", "peak_memory_kind",
                "tflops_per_process", "gflops_per_image", "mfu"):
        assert key in epoch, key
    assert epoch["peak_memory_kind"] == "process max RSS" and epoch["peak_memory_gb"] > 0.05
    assert 0 < epoch["mfu"] < 1 and 0.0 <= epoch["data_wait"] <= 1.0
    assert abs(epoch["mfu"] - epoch["tflops_per_process"] / 0.5) < 1e-12
