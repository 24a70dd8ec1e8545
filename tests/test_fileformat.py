import os
import pickle

import pytest
import torch
from conftest import make_tiny_unet, randomize
from safetensors import safe_open
from safetensors.torch import save_file

import lllite
from lllite import LLLiteFileError
from lllite.sdxl.names import find_targets
from lllite.sdxl.pipeline import sdxl_unet


@pytest.fixture
def network(tiny_unet):
    return randomize(lllite.create_network(tiny_unet, up_path=True))


def test_round_trip_in_fp32_is_bit_exact(network, tmp_path):
    path = tmp_path / "net.safetensors"
    network.save(path, dtype=None)
    loaded = lllite.load(path)
    original = network.state_dict()
    assert sorted(loaded.state_dict()) == sorted(original)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_default_save_is_fp16_like_the_published_files(network, tmp_path):
    path = tmp_path / "net.safetensors"
    network.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/control-net-lllite"
    assert metadata["lllite.cond_emb_dim"] == "32" and metadata["lllite.mlp_dim"] == "64"
    loaded = lllite.load(path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, network.state_dict()[key].half().float()), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_files_of_any_float_dtype_load(network, tmp_path, dtype):
    path = tmp_path / "net.safetensors"
    network.save(path, dtype=dtype)
    assert lllite.load(path).state_dict()["lllite_unet_middle_block_1_transformer_blocks_0_attn1_to_q.up.0.weight"].dtype == torch.float32
    assert next(lllite.load(path, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_a_loaded_network_is_ready_for_inference(network, tmp_path):
    network.save(tmp_path / "n.safetensors")
    assert not lllite.load(tmp_path / "n.safetensors").training


def test_dimensions_and_depths_are_read_from_the_tensors(tmp_path):
    unet = make_tiny_unet()
    network = lllite.create_network(unet, cond_emb_dim=16, network_dim=24, up_path=True)
    network.save(tmp_path / "n.safetensors")
    loaded = lllite.load(tmp_path / "n.safetensors")
    assert (loaded.cond_emb_dim, loaded.network_dim, len(loaded)) == (16, 24, len(network))
    for (name, module), (_, original) in zip(loaded.lllite_modules(), network.lllite_modules()):
        assert (module.in_dim, module.depth) == (original.in_dim, original.depth), name


def test_keys_are_kohyas_module_names(network, tmp_path):
    network.save(tmp_path / "n.safetensors")
    with safe_open(str(tmp_path / "n.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.conditioning1.0.weight" in keys
    assert "lllite_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_q.up.0.bias" in keys
    assert all(k.startswith("lllite_unet_") for k in keys)


def test_a_loaded_file_gives_the_same_unet_output(network, tmp_path):
    from test_network import control, run

    unet = make_tiny_unet()
    image = control()
    network.apply_to(unet)
    network.set_cond_image(image)
    expected = run(unet)
    network.remove()
    network.save(tmp_path / "n.safetensors", dtype=None)
    loaded = lllite.load(tmp_path / "n.safetensors").apply_to(unet)
    loaded.set_cond_image(image)
    assert torch.equal(run(unet), expected)


def test_save_never_overwrites_without_being_asked(network, tmp_path):
    path = tmp_path / "mine.safetensors"
    path.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        network.save(path)
    assert path.read_bytes() == b"the user's file"
    network.save(path, overwrite=True)
    assert len(lllite.load(path)) == len(network)
    assert os.listdir(tmp_path) == ["mine.safetensors"]  # no temporary files left


def test_user_metadata_is_kept(network, tmp_path):
    network.save(tmp_path / "n.safetensors", metadata={"ss_steps": 100, "note": "canny"})
    loaded = lllite.load(tmp_path / "n.safetensors")
    assert loaded.metadata["ss_steps"] == "100" and loaded.metadata["note"] == "canny"


def test_tensor_only_pickles_load(network, tmp_path):
    torch.save(network.state_dict(), tmp_path / "old.pt")
    assert len(lllite.load(tmp_path / "old.pt")) == len(network)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickles_with_code_are_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"lllite_unet_x.down.0.weight": Payload()}, f)
    with pytest.raises(LLLiteFileError, match="evil.ckpt.*does not run code"):
        lllite.load(tmp_path / "evil.ckpt")
    assert not (tmp_path / "PWNED").exists()


def test_a_lora_file_is_named_as_such(tmp_path):
    save_file({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
              str(tmp_path / "style.safetensors"))
    with pytest.raises(LLLiteFileError, match="style.safetensors.*LoRA.*load_lora_weights"):
        lllite.load(tmp_path / "style.safetensors")


def test_other_safetensors_are_refused(tmp_path):
    save_file({"model.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LLLiteFileError, match="other.safetensors.*not an LLLite file.*model.weight"):
        lllite.load(tmp_path / "other.safetensors")


def test_truncated_file_is_refused(network, tmp_path):
    path = tmp_path / "cut.safetensors"
    network.save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LLLiteFileError, match="cut.safetensors.*not a readable safetensors"):
        lllite.load(path)


def test_a_text_file_is_refused(tmp_path):
    path = tmp_path / "page.safetensors"
    path.write_text("<html>Not found</html>")
    with pytest.raises(LLLiteFileError, match="page.safetensors"):
        lllite.load(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        lllite.load(tmp_path / "nope.safetensors")


def test_missing_and_unknown_parameters_are_named(network, tmp_path):
    state = network.state_dict()
    name = "lllite_unet_middle_block_1_transformer_blocks_0_attn1_to_q"
    broken = {k: v for k, v in state.items() if k != f"{name}.mid.0.weight"}
    save_file(broken, str(tmp_path / "a.safetensors"))
    with pytest.raises(LLLiteFileError, match=f"{name}.*mid.0.weight"):
        lllite.load(tmp_path / "a.safetensors")
    save_file({**state, f"{name}.extra.0.weight": torch.zeros(1)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(LLLiteFileError, match="unknown parameter.*extra.0.weight"):
        lllite.load(tmp_path / "b.safetensors")


def test_inconsistent_shapes_are_named(network, tmp_path):
    state = dict(network.state_dict())
    name = "lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k"
    state[f"{name}.mid.0.weight"] = torch.zeros(64, 99)
    save_file(state, str(tmp_path / "a.safetensors"))
    with pytest.raises(LLLiteFileError, match=f"{name}.*mid.0.weight.*\\(64, 99\\)"):
        lllite.load(tmp_path / "a.safetensors")


def test_a_file_for_another_unet_names_the_module_and_both_widths(tmp_path):
    tiny = make_tiny_unet()
    names = set(find_targets(tiny))
    sdxl_network = lllite.create_network(sdxl_unet(device="meta"))
    same_blocks = lllite.LLLiteNetwork({n: m for n, m in sdxl_network.lllite_modules() if n in names})
    with pytest.raises(ValueError, match=r"input_blocks_4_1_transformer_blocks_0_attn1_to_q.*640.*takes 32"):
        same_blocks.apply_to(tiny)


def test_blocks_the_unet_does_not_have_are_named():
    sdxl = lllite.create_network(sdxl_unet(device="meta"))
    deep = {n: m for n, m in sdxl.lllite_modules() if "transformer_blocks_9" in n}
    with pytest.raises(ValueError, match="blocks this UNet does not have.*transformer_blocks_9"):
        lllite.LLLiteNetwork(deep).apply_to(make_tiny_unet())


def test_save_wants_a_safetensors_name(network, tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        network.save(tmp_path / "net.pt")
