"""Models and tokenizers by hub id (``jaxrlhf.hub``), fully offline: a repository laid out in
a temporary Hugging Face cache as ``hf download`` leaves it (``models--org--name/blobs``,
``snapshots/<commit>/`` linking into them, ``refs/<branch or tag>`` holding the commit),
with ``HF_HOME`` / ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx
from huggingface_hub import constants as hf_constants, scan_cache_dir
from safetensors.numpy import load_file

from conftest import REPO, run_cli
from jaxrlhf import config as config_lib, hub, stages
from jaxrlhf.data.tokenizer import load_tokenizer, train_bpe_tokenizer
from jaxrlhf.errors import ConfigError, MissingInputError
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.hf import load_causal_lm, load_hf_config, save_causal_lm
from jaxrlhf.models.transformer import CausalLM
from jaxrlhf.tasks import get_task

REPO_ID = "org/name"
COMMIT_V1, COMMIT_MAIN = "1" * 40, "2" * 40
SFT_CONFIG = os.path.join(REPO, "configs/sft/quickstart.py")
TINY = ["--config.train.steps=2", "--config.train.log_every=1", "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2", "--config.train.batch_size=4",
        "--config.data.num_train=64", "--config.data.num_eval=4", "--config.train.num_samples=1",
        "--config.train.sample_tokens=4", "--config.optim.learning_rate=1e-5"]


def _texts():
    return [e["prompt"] + e["completion"]
            for e in get_task("sentiment").demonstrations(256, seed=0)]


def _hf_dir(path, *, d_model, bpe_vocab, seed):
    """A tiny GPT-2 written by our HF export, with a BPE tokenizer of its vocabulary."""
    tokenizer = train_bpe_tokenizer(_texts(), bpe_vocab)
    cfg = ModelConfig.preset("gpt2", vocab_size=len(tokenizer), d_model=d_model, n_heads=4,
                             d_ff=2 * d_model, max_seq_len=64)
    save_causal_lm(CausalLM(cfg, rngs=nnx.Rngs(seed)), str(path))
    tokenizer.save_pretrained(str(path))
    return {"d_model": d_model, "vocab": len(tokenizer),
            "weights": load_file(os.path.join(path, "model.safetensors"))}


def add_revision(cache, repo_id, commit, source, refs=()):
    """``source``'s files as the snapshot ``commit`` of ``repo_id`` in the hub cache
    ``cache`` (content-addressed blobs, relative links), and ``refs`` pointing at it."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for file in sorted(source.iterdir()):
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.join("..", "..", "blobs", blob.name))
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline HF cache holding ``org/name`` at two commits: ``v1`` (d_model 32) and
    ``main`` (d_model 48, another tokenizer). huggingface_hub reads its environment at import,
    so its constants are set too; a command-line run reads the environment."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    for name, value in (("HF_HOME", home), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    revisions = {"v1": _hf_dir(tmp_path / "src_v1", d_model=32, bpe_vocab=280, seed=1),
                 "main": _hf_dir(tmp_path / "src_main", d_model=48, bpe_vocab=320, seed=2)}
    assert revisions["v1"]["vocab"] != revisions["main"]["vocab"]
    add_revision(cache, REPO_ID, COMMIT_V1, tmp_path / "src_v1", refs=["v1"])
    add_revision(cache, REPO_ID, COMMIT_MAIN, tmp_path / "src_main", refs=["main"])
    # the layout is the hub's own: its cache scanner reads both revisions and their refs
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == REPO_ID and repo.refs.keys() == {"main", "v1"}
    assert {r.commit_hash for r in repo.revisions} == {COMMIT_V1, COMMIT_MAIN}
    return cache, revisions


def _assert_weights(model_or_dir, expected, atol=0.0):
    weights = (load_file(os.path.join(model_or_dir, "model.safetensors"))
               if isinstance(model_or_dir, str) else None)
    if weights is None:
        from jaxrlhf.models.hf import causal_lm_to_hf
        weights = causal_lm_to_hf(model_or_dir)
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(weights[name], value, atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize("value, parsed", [
    ("org/name", ("org/name", None)), ("Org-1/na_me.v2@v1.0", ("Org-1/na_me.v2", "v1.0")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")), ("org/name@" + "a" * 40,
                                                        ("org/name", "a" * 40)),
    ("gpt2", None), ("/abs/dir", None), ("./rel/dir", None), ("a/b/c", None),
    ("org/name@", None), ("org--x/name", None), ("org/na..me", None), ("~/models/x", None),
    ("org/na me", None), ("örg/name", None), ("", None)])
def test_what_is_a_hub_id(value, parsed):
    assert hub.parse_hub_id(value) == parsed


def test_an_sft_run_reads_model_and_tokenizer_from_the_cache_offline(hf_cache, tmp_path):
    """``model_init=org/name`` and ``data.tokenizer=org/name`` with HF_HUB_OFFLINE=1: the run
    trains the cached main snapshot's architecture from its weights (2 steps at lr 1e-5 move
    them by < 1e-3) with its tokenizer, and ``export`` writes them back."""
    _, revisions = hf_cache
    main = revisions["main"]
    workdir, out = tmp_path / "sft", tmp_path / "exported"
    run_cli("sft", "configs/sft/quickstart.py", workdir, *TINY,
            f"--config.model_init={REPO_ID}", f"--config.data.tokenizer={REPO_ID}", timeout=300)
    with open(workdir / "model.json") as f:
        assert json.load(f)["model"]["d_model"] == main["d_model"]
    assert len(load_tokenizer(str(workdir / "tokenizer"))) == main["vocab"]
    with open(workdir / "config.json") as f:     # the run records the id as given
        assert json.load(f)["model_init"] == REPO_ID
    run_cli("export", f"--checkpoint={workdir}", f"--output={out}", timeout=300)
    _assert_weights(str(out), main["weights"], atol=1e-3)


@pytest.mark.slow   # a LoRA run and an export (21 s): in -m slow, for the default suite's time
def test_a_lora_run_pins_its_hub_base_to_the_commit(hf_cache, tmp_path):
    """A LoRA run's model card records its hub base as ``org/name@<commit>``: after ``main``
    moves to the other snapshot, ``export`` still merges the adapters into the weights the
    run trained on."""
    cache, revisions = hf_cache
    workdir, out = tmp_path / "lora", tmp_path / "exported"
    run_cli("sft", "configs/sft/quickstart.py", workdir, *TINY, "--config.lora.rank=2",
            f"--config.model_init={REPO_ID}", f"--config.data.tokenizer={REPO_ID}", timeout=300)
    with open(workdir / "model.json") as f:
        assert json.load(f)["base"] == f"{REPO_ID}@{COMMIT_MAIN}"
    (cache / "models--org--name" / "refs" / "main").write_text(COMMIT_V1)
    assert load_hf_config(REPO_ID).d_model == revisions["v1"]["d_model"]   # main has moved
    run_cli("export", f"--checkpoint={workdir}", f"--output={out}", timeout=300)
    _assert_weights(str(out), revisions["main"]["weights"], atol=1e-3)


def test_at_revision_picks_that_snapshot(hf_cache):
    _, revisions = hf_cache
    for value, revision in ((REPO_ID, "main"), (f"{REPO_ID}@main", "main"),
                            (f"{REPO_ID}@v1", "v1"), (f"{REPO_ID}@{COMMIT_V1}", "v1")):
        expected = revisions[revision]
        assert load_hf_config(value).d_model == expected["d_model"], value
        _assert_weights(load_causal_lm(value), expected["weights"])
        assert len(load_tokenizer(value)) == expected["vocab"], value


def test_a_local_directory_named_like_an_id_wins(hf_cache, tmp_path, monkeypatch):
    _, revisions = hf_cache
    monkeypatch.chdir(tmp_path)
    local = _hf_dir(tmp_path / "org" / "name", d_model=16, bpe_vocab=300, seed=3)
    assert hub.resolve_hf_dir(REPO_ID, field="model_init") == REPO_ID
    assert load_hf_config(REPO_ID).d_model == 16 != revisions["main"]["d_model"]
    _assert_weights(load_causal_lm(REPO_ID), local["weights"])
    assert len(load_tokenizer(REPO_ID)) == local["vocab"]
    config = config_lib.load_config_file(SFT_CONFIG)
    config.model_init = REPO_ID
    stages.validate("sft", config, num_devices=1)             # the directory, not the id
    assert hub.pinned(REPO_ID, field="model_init") == str(tmp_path / "org" / "name")


@pytest.mark.parametrize("value, revision", [("org/absent", "main"),
                                             (f"{REPO_ID}@v9", "v9")])
def test_an_id_that_cannot_be_resolved_is_one_line(hf_cache, value, revision):
    repo = value.partition("@")[0]
    for load in (load_hf_config, load_tokenizer,
                 lambda v: hub.resolve_hf_dir(v, field="model")):
        with pytest.raises(MissingInputError) as caught:
            load(value)
        message = str(caught.value)
        assert "\n" not in message, message
        assert message.startswith(f"{'tokenizer' if load is load_tokenizer else 'model'}="
                                  f"{value!r}: revision {revision!r} of the hub repository "
                                  f"{repo!r} is not in the local Hugging Face cache"), message
        assert "HF_HUB_OFFLINE=1" in message and f"`hf download {repo}" in message, message
    config = config_lib.load_config_file(
        os.path.join(REPO, "configs/pipeline/quickstart.py"))
    config.sft.model_init = value
    with pytest.raises(MissingInputError, match=rf"^config\.sft\.model_init={value!r}: "):
        stages.validate("pipeline", config, num_devices=1)


def test_the_command_line_answers_a_missing_id_in_one_line(hf_cache, tmp_path):
    result = run_cli("sft", "configs/sft/quickstart.py", tmp_path / "run", *TINY,
                     "--config.model_init=org/absent", check=False, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "jaxrlhf: error: config.model_init='org/absent': revision 'main' of the hub "
        "repository 'org/absent' is not in the local Hugging Face cache"), result.stderr


@pytest.mark.parametrize("field", ["model_init", "data.tokenizer"])
@pytest.mark.parametrize("value", ["not-an-id", "/nonexistent/dir", "a/b/c"])
def test_a_value_that_is_no_directory_and_no_id_keeps_its_error(hf_cache, field, value):
    assert hub.resolve_hf_dir(value, field=field) == value
    config = config_lib.load_config_file(SFT_CONFIG)
    config_lib.override(config, field, value)
    with pytest.raises(ConfigError, match=rf"config\.{field}={value!r} is not a directory"):
        stages.validate("sft", config, num_devices=1)
    load = load_tokenizer if field == "data.tokenizer" else load_hf_config
    with pytest.raises(MissingInputError, match="neither a local directory nor a hub id"):
        load(value)


def test_validation_resolves_each_id_once_with_its_field(hf_cache, monkeypatch):
    config = config_lib.load_config_file(SFT_CONFIG)
    config.model_init, config.data.tokenizer = REPO_ID, f"{REPO_ID}@v1"
    calls, resolve = [], hub.resolve_hf_dir
    monkeypatch.setattr(hub, "resolve_hf_dir",
                        lambda value, **kw: calls.append((value, kw)) or resolve(value, **kw))
    stages.validate("sft", config, num_devices=1)
    assert calls == [(REPO_ID, {"field": "config.model_init", "weights": True}),
                     (f"{REPO_ID}@v1", {"field": "config.data.tokenizer", "weights": False})]
    assert config.model_init == REPO_ID               # the config itself is not changed
