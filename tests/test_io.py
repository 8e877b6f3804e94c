"""mae.io: file safety and bounds (format from the bytes, no unsafe advice, sizes checked before allocating),
and the one atomic writer (permissions, temporaries)."""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import threading

import pytest
import torch
from safetensors.torch import save_file

import mae
from mae import MaskedAutoEncoder, create_model
from mae.io import UnsafeCheckpointError, load_checkpoint, read_checkpoint
from mae.io.atomic import TEMP_SUFFIX, atomic_write, remove_temporaries


def tiny(seed: int = 0) -> MaskedAutoEncoder:
    torch.manual_seed(seed)
    return create_model("mae_vit_test")


def same_weights(a: MaskedAutoEncoder, b: MaskedAutoEncoder) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ---------------------------------------------------------------------------------------------- reading


def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    model = tiny(seed=1)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, tmp_path / "weights.pth")  # safetensors under a torch-looking name
    torch.save({"model": sd}, tmp_path / "weights.safetensors")  # and the other way round
    for name in ("weights.pth", "weights.safetensors"):
        back = mae.from_pretrained(tmp_path / name, num_heads=4, decoder_num_heads=4)
        assert same_weights(back, model), name


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_unsafe_pickle_is_refused_without_torchs_advice(tmp_path, protocol):
    path = tmp_path / "plain.pkl"  # a bare pickle, not a torch.save archive (protocol 4 used to pass torch's advice on)
    path.write_bytes(pickle.dumps({"w": _Payload()}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "refused" in message and "pickled" in message
    assert "weights_only=False" not in message and "`False`" not in message


def test_config_claiming_a_larger_model_is_refused_before_building(tmp_path, monkeypatch):
    mae.save_pretrained(tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(embed_dim=4096, depth=48, num_heads=32)  # ~10 GB of float32 if it were built
    (tmp_path / "config.json").write_text(json.dumps(config))
    built = []
    real = MaskedAutoEncoder.from_config.__func__
    monkeypatch.setattr(MaskedAutoEncoder, "from_config",
                        classmethod(lambda cls, cfg, **kw: built.append(cfg) or real(cls, cfg, **kw)))
    with pytest.raises(ValueError, match=r"embed_dim=4096 but the tensors say 64.*depth=48 but the tensors say 2"):
        mae.from_pretrained(tmp_path)
    assert built == []  # refused from the shapes alone: nothing was allocated


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_tensors_are_not_cast_into_weights(dtype):
    sd = tiny().state_dict()
    sd["blocks.0.mlp.fc1.bias"] = torch.ones_like(sd["blocks.0.mlp.fc1.bias"], dtype=dtype)
    with pytest.raises(ValueError, match=rf"blocks\.0\.mlp\.fc1\.bias \({dtype}\)"):
        load_checkpoint(tiny(), sd)


# ---------------------------------------------------------------------------------------------- writing


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        mae.save_pretrained(tiny(), tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name


def test_atomic_write_keeps_the_old_content_on_error(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "d", lambda tmp: ((tmp / "x").write_text("1"), fail(tmp / "y")), is_dir=True)
    assert os.listdir(tmp_path) == ["a.json"]


def test_remove_temporaries_removes_only_ours(tmp_path):
    (tmp_path / f".last.0123456789ab{TEMP_SUFFIX}").mkdir()
    (tmp_path / f".a.json.0123456789ab{TEMP_SUFFIX}").write_text("x")
    (tmp_path / ".hidden-note").write_text("mine")
    (tmp_path / "notes.tmp").write_text("mine")
    removed = remove_temporaries(tmp_path)
    assert len(removed) == 2 and sorted(os.listdir(tmp_path)) == [".hidden-note", "notes.tmp"]



def test_loading_and_saving_name_their_bad_arguments(tmp_path):
    """strict="false" used to count as true; save_pretrained(model, 3) failed inside pathlib without naming it."""
    import mae

    model = mae.create_model("mae_vit_test")
    folder = mae.save_pretrained(model, tmp_path / "m")
    with pytest.raises(TypeError, match="strict"):
        mae.from_pretrained(folder, strict="false")
    with pytest.raises(TypeError, match="directory"):
        mae.save_pretrained(model, 3)
    with pytest.raises(TypeError, match="model"):
        mae.io.load_checkpoint("not a model", folder)


def poisoned(model: MaskedAutoEncoder) -> MaskedAutoEncoder:
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] = math.nan
        model.decoder_pred.bias[1] = math.inf
    return model


def test_a_checkpoint_with_nan_weights_is_refused_unless_asked(tmp_path):
    """Non-finite weights loaded (and evaluated at chance) without a word."""
    state = poisoned(tiny()).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "diverged.safetensors")
    names = r"\(blocks\.0\.attn\.qkv\.weight, decoder_pred\.bias\)"
    with pytest.raises(ValueError, match=rf"diverged\.safetensors: 2 tensor\(s\) hold NaN.*{names}.*non_finite=True"):
        mae.from_pretrained(tmp_path / "diverged.safetensors")
    with pytest.raises(ValueError, match="allow_non_finite"):
        load_checkpoint(tiny(), state)
    model = mae.from_pretrained(tmp_path / "diverged.safetensors", allow_non_finite=True)
    assert math.isnan(model.blocks[0].attn.qkv.weight[0, 0].item()) and math.isinf(model.decoder_pred.bias[1].item())
    with pytest.raises(TypeError, match="allow_non_finite"):
        mae.from_pretrained(tmp_path / "diverged.safetensors", allow_non_finite="yes")


def test_nan_weights_are_never_saved(tmp_path):
    with pytest.raises(ValueError, match=r"2 tensor\(s\) hold NaN or infinite values.*nothing was written"):
        mae.save_pretrained(poisoned(tiny()), tmp_path / "m")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_save_pretrained_never_replaces_a_users_own_files(tmp_path):
    """save_pretrained replaced a user's own model.safetensors in a folder it had not written."""
    folder = tmp_path / "mine"
    folder.mkdir()
    save_file({"w": torch.ones(3)}, folder / "model.safetensors")
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"holds model\.safetensors that mae-pytorch did not write.*overwrite=True"):
        mae.save_pretrained(tiny(), folder)
    assert (folder / "model.safetensors").read_bytes() == before and sorted(os.listdir(folder)) == [
        "model.safetensors"]
    (folder / "config.json").write_text('{"model_type": "bert"}')  # someone else's config: not ours either
    with pytest.raises(ValueError, match=r"config\.json and model\.safetensors that mae-pytorch did not write"):
        mae.save_pretrained(tiny(), folder)
    assert (folder / "model.safetensors").read_bytes() == before
    mae.save_pretrained(tiny(1), folder, overwrite=True)
    assert same_weights(mae.from_pretrained(folder), tiny(1))
    mae.save_pretrained(tiny(2), folder)  # ours now: updated in place without asking
    assert same_weights(mae.from_pretrained(folder), tiny(2))


def test_a_fifo_given_as_a_checkpoint_is_refused_not_waited_on(tmp_path):
    """from_pretrained opened a FIFO and waited for a writer forever."""
    os.mkfifo(tmp_path / "model.safetensors")
    errors: list = []

    def load():
        try:
            mae.from_pretrained(tmp_path / "model.safetensors")
        except ValueError as err:
            errors.append(err)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # a regression: release the reader so the session can end, then fail
        os.close(os.open(tmp_path / "model.safetensors", os.O_WRONLY | os.O_NONBLOCK))
    assert not thread.is_alive() and "is a FIFO (named pipe), not a regular file" in str(errors[0])


def test_a_fifo_named_config_json_is_refused_not_waited_on(tmp_path):
    """save_pretrained asks whether the folder is ours by reading its config.json: a FIFO there used to block the
    save forever (an open for reading waits for a writer)."""
    import os

    os.mkfifo(tmp_path / "config.json")
    model = mae.create_model("mae_vit_test")
    with pytest.raises(ValueError, match="that mae-pytorch did not write"):
        mae.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
