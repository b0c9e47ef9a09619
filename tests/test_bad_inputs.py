"""Property-based fuzzing of the data loaders and of config validation.

For any file of rows — valid ones, rows with a field of the wrong kind or missing, JSON that
is not an object, bytes that are not UTF-8 or not JSON — a loader either returns exactly
the rows an independent oracle accepts, or raises ``DataError`` naming the file and the
line of the first bad row (and the field, where one is at fault); never another exception,
never a silent success. Config validation likewise accepts a value of the declared type or
raises ``ConfigError`` naming the field; a value of the wrong type is always rejected.
"""
import gzip
import json
import math
import os
import re
import typing

import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxrlhf import config as config_lib, settings as settings_lib, stages
from jaxrlhf.data import preference, records, sft
from jaxrlhf.errors import ConfigError, DataError, MissingInputError
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.tasks import get_task

TOKENIZER = get_task("sentiment").tokenizer
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=5)
texts = st.text(max_size=12)


# --- an oracle written from the documented row formats, not from the loaders ----------

def _line_verdict(raw: bytes, lineno: int):
    """("skip" | "row" | "bad", value, field): what one JSONL line must give."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bad", None, None
    if lineno == 1:
        line = line.removeprefix("\ufeff")
    if not line.strip():
        return "skip", None, None
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return "bad", None, None
    return ("row", value, None) if isinstance(value, dict) else ("bad", None, None)


def _sft_fault(row: dict) -> str | None:
    """The field at fault in an SFT row ("" for the row as a whole), or None if valid."""
    if "messages" in row:
        if "prompt" in row or "completion" in row:
            return "messages"
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return "messages"
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return f"messages[{i}]"
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    return f"messages[{i}].{key}"
        if messages[-1]["role"] != "assistant":
            return f"messages[{len(messages) - 1}].role"
        return None if len(messages) >= 2 else "messages"
    for field in ("prompt", "completion"):
        if not isinstance(row.get(field), str):
            return field
    return None


def _hh_splits(chosen: str, rejected: str) -> bool:
    shared = os.path.commonprefix([chosen, rejected])
    return "\n\nAssistant:" in shared


def _pair_fault(row: dict) -> str | None:
    for field in ("chosen", "rejected"):
        if not isinstance(row.get(field), str):
            return field
    if "prompt" in row and not isinstance(row["prompt"], str):
        return "prompt"
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not math.isfinite(margin):
        return "margin"
    if "prompt" not in row and not _hh_splits(row["chosen"], row["rejected"]):
        return "Assistant"
    return None


def _expected(lines: list[bytes], fault) -> tuple[str, dict[int, str | None], list]:
    """(verdict "ok" | "bad" | "empty", {bad line: field at fault or None}, valid rows)."""
    rows, faults = [], {}
    for lineno, raw in enumerate(lines, start=1):
        kind, value, _ = _line_verdict(raw, lineno)
        if kind == "bad":
            faults[lineno] = None
        elif kind == "row":
            field = fault(value)
            if field is None:
                rows.append(value)
            else:
                faults[lineno] = field
    return ("bad" if faults else "ok" if rows else "empty"), faults, rows


# --- strategies ---------------------------------------------------------------------

def _messages():
    turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                  "content": texts})
    last = st.fixed_dictionaries({"role": st.just("assistant"), "content": texts})
    return st.builds(lambda head, tail: head + [tail], st.lists(turn, max_size=2), last)



def _mutated(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid row with one field deleted or replaced by any JSON value, or extra keys."""
    def mutate(row, key, value, how):
        row = dict(row)
        if how == "delete":
            row.pop(key, None)
        else:
            row[key] = value
        return row
    keys = st.sampled_from(["prompt", "completion", "messages", "chosen", "rejected", "margin",
                            "id"])
    return st.builds(mutate, valid, keys, json_values, st.sampled_from(["delete", "replace"]))


def _line(row_strategy) -> st.SearchStrategy:
    as_json = row_strategy.map(lambda r: json.dumps(r).encode())
    junk = st.binary(max_size=12).filter(lambda b: b"\n" not in b)
    blank = st.sampled_from([b"", b"  ", b"\t"])
    not_object = json_values.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json, as_json, junk, blank, not_object)


sft_rows = st.one_of(
    st.fixed_dictionaries({"prompt": texts, "completion": texts}),
    st.fixed_dictionaries({"messages": _messages()}))
sft_lines = st.lists(_line(st.one_of(sft_rows, sft_rows, _mutated(sft_rows))), max_size=8)

hh_rows = st.builds(lambda human, a, b: {"chosen": f"\n\nHuman: {human}\n\nAssistant:{a}",
                                         "rejected": f"\n\nHuman: {human}\n\nAssistant:{b}"},
                    texts, texts, texts)
trl_rows = st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts},
                                 optional={"margin": st.floats(-5, 5)})
pair_rows = st.one_of(trl_rows, hh_rows)
pair_lines = st.lists(_line(st.one_of(pair_rows, pair_rows, _mutated(pair_rows))), max_size=8)


def _write(tmp_path, lines: list[bytes], suffix: str) -> str:
    path = str(tmp_path / f"fuzz{suffix}")
    data = b"".join(line + b"\n" for line in lines)
    if suffix.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _assert_names(error: DataError, path: str, faults: dict[int, str | None]):
    """The message names the file and one bad line (and that line's field, if any)."""
    message = str(error)
    assert path in message, message
    if faults:
        assert any(f":{line}:" in message and (not field or field in message)
                   for line, field in faults.items()), (faults, message)


@FUZZ
@given(lines=sft_lines, suffix=st.sampled_from([".jsonl", ".jsonl.gz"]))
def test_sft_loader_fuzz(tmp_path, lines, suffix):
    path = _write(tmp_path, lines, suffix)
    verdict, faults, rows = _expected(lines, _sft_fault)
    try:
        examples = sft.sft_examples(records.load_records(path), TOKENIZER)
        arrays = sft.tokenize_sft(examples, TOKENIZER, max_len=16)
    except DataError as e:
        assert verdict != "ok", f"rejected a valid file: {e}"
        _assert_names(e, path, faults)
        return
    assert verdict == "ok", f"accepted a file the oracle rejects: {verdict} {faults}"
    completions = [r["completion"] if "completion" in r else r["messages"][-1]["content"]
                   for r in rows]
    assert [e["completion"] for e in examples] == completions
    stats = arrays.stats
    assert stats.examples == len(rows) == len(arrays["input_ids"])
    assert stats.empty_completion == sum(not c.strip() for c in completions)


@FUZZ
@given(lines=pair_lines, suffix=st.sampled_from([".jsonl", ".jsonl.gz"]))
def test_preference_loader_fuzz(tmp_path, lines, suffix):
    path = _write(tmp_path, lines, suffix)
    verdict, faults, rows = _expected(lines, _pair_fault)
    try:
        pairs = preference.pairs_from_records(records.load_records(path))
        arrays, stats = preference.tokenize_pairs(pairs, TOKENIZER, max_prompt_tokens=4,
                                                  max_response_tokens=4)
    except DataError as e:
        assert verdict != "ok", f"rejected a valid file: {e}"
        _assert_names(e, path, faults)
        return
    assert verdict == "ok", f"accepted a file the oracle rejects: {verdict} {faults}"
    assert len(pairs) == len(rows)
    for pair, row in zip(pairs, rows):
        assert pair.margin == float(row.get("margin", 0.0))
        assert pair.prompt + pair.chosen == row.get("prompt", "") + row["chosen"]
        assert pair.prompt + pair.rejected == row.get("prompt", "") + row["rejected"]
    assert stats.pairs_in == len(rows)
    assert len(arrays["margin"]) == len(rows) - stats.identical_dropped


@FUZZ
@given(lines=st.lists(json_values, max_size=6))
def test_json_list_files_name_the_bad_row(tmp_path, lines):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(lines))
    try:
        loaded = records.load_records(str(path))
    except DataError as e:
        bad = [i for i, row in enumerate(lines) if not isinstance(row, dict)]
        assert not lines or (bad and f"row {bad[0]}" in str(e)), str(e)
        return
    assert [row for _, row in loaded] == lines and lines


# --- config validation ----------------------------------------------------------------

BASE = config_lib.load_config_file("configs/ppo/quickstart.py")
LEAVES = config_lib.field_names(BASE)
config_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), inner, max_size=2),
    max_leaves=4)
SECTIONS = {**settings_lib.SECTION_TYPES, "model": ModelConfig}


def _targets(name: str) -> tuple[str, ...]:
    """The fields a config name sets: itself, or for a deprecated name its new fields."""
    return settings_lib.alias_targets(name) if name in settings_lib.ALIASES else (name,)


def _declared_type(name: str):
    section, _, leaf = _targets(name)[0].rpartition(".")
    if section in SECTIONS:
        return typing.get_type_hints(SECTIONS[section]).get(leaf)
    if section == "mesh":
        return int
    return typing.get_type_hints(settings_lib.RunSettings).get(leaf)


def _has_type(value, want) -> bool:
    if want is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want) if want in (bool, str) else True


def _with(name: str, value) -> ml_collections.ConfigDict:
    """The quickstart PPO config with ``name`` set to ``value``, built as a fresh (untyped)
    ConfigDict, as a config file that assigns any value would produce."""
    tree = BASE.to_dict()
    node = tree
    *parents, leaf = name.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return ml_collections.ConfigDict(tree)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(name=st.sampled_from(LEAVES), value=config_values, devices=st.sampled_from([1, 8]))
def test_config_validation_fuzz(name, value, devices):
    config = _with(name, value)
    want = _declared_type(name)
    try:
        stages.validate("ppo", config, num_devices=devices)
    except ConfigError as e:
        leaves = [target.rsplit(".", 1)[-1] for target in _targets(name)]
        assert str(e).startswith("config.") and any(leaf in str(e) for leaf in leaves), \
            (name, str(e))
        return
    unset_alias = name in settings_lib.ALIASES and value is None
    assert unset_alias or _has_type(value, want), f"config.{name}={value!r} accepted, declared {want}"


@pytest.mark.parametrize("name", LEAVES)
def test_every_field_rejects_a_value_of_the_wrong_kind(name):
    want = _declared_type(name)
    unset = [] if name in settings_lib.ALIASES else [None]   # None: a deprecated name unset
    wrong = unset + [[1]] + ([float("nan"), "x"] if want is float else
                             ["x", 1.5] if want is int else ["x"] if want is bool else [3])
    for value in wrong:
        with pytest.raises(ConfigError, match="|".join(
                target.rsplit(".", 1)[-1] for target in _targets(name))):
            stages.validate("ppo", _with(name, value), num_devices=1)


def test_ppo_counts_the_prompts_it_cuts_and_the_empty_ones():
    """PPO keeps the last ``sampling.prompt_length`` tokens of a longer prompt: counted, as an
    empty prompt is, in the stage's data summary."""
    from jaxrlhf.trainers import ppo
    config = config_lib.load_config_file("configs/ppo/quickstart.py")
    config.sampling.prompt_length = 3
    examples = [{"prompt": p, "completion": " fine ."}
                for p in ("my show was", "my friend said that show felt", " ", "the movie")]
    run_settings = settings_lib.RunSettings.from_config(config)
    arrays, counts = ppo.prompt_arrays(TOKENIZER, examples, run_settings)
    assert counts == {"prompts": 4, "prompt_truncated": 1, "empty_prompt": 1}
    assert arrays["prompt_mask"].sum(axis=1).tolist() == [3, 3, 0, 2]
    assert TOKENIZER.decode(arrays["prompt_ids"][1, -3:]) == "that show felt"


@pytest.mark.parametrize("text, error, message", [
    ("x = 1\n", ConfigError, "defines no get_config()"),
    ("def get_config(:\n", ConfigError, "the config file failed: SyntaxError"),
    ("def get_config():\n    return {}['model']\n", ConfigError,
     "the config file failed: KeyError: 'model'"),
])
def test_a_config_file_that_does_not_run_is_named(tmp_path, text, error, message):
    path = tmp_path / "cfg.py"
    path.write_text(text)
    with pytest.raises(error, match=re.escape(message)) as caught:
        config_lib.load_config_file(str(path))
    assert str(path) in str(caught.value)
    with pytest.raises(MissingInputError, match="no such config file"):
        config_lib.load_config_file(str(tmp_path / "absent.py"))


def test_model_and_tokenizer_directories_without_their_files_are_named(tmp_path):
    from jaxrlhf.data.tokenizer import load_tokenizer
    from jaxrlhf.models.hf import load_hf_config
    with pytest.raises(MissingInputError, match="has no config.json"):
        load_hf_config(str(tmp_path))
    with pytest.raises(MissingInputError, match="holds none of"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataError, match="transformers cannot load it"):
        load_tokenizer(str(tmp_path))
