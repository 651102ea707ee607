"""Supervised fine-tuning data: reading pairs with counted drops, and loss masks on the response only."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lathe.core.errors import InputError
from lathe.data.records import PREFERENCE_FIELDS, read_records
from lathe.training.posttrain.sft_data import IGNORE_INDEX, encode_pair, encode_pairs

EOS = 0


def byte_ids(texts: list[str]) -> list[list[int]]:
    """A byte-level tokenizer (ids 1..256, 0 is EOS): one id per UTF-8 byte, so lengths are predictable."""
    return [[b + 1 for b in text.encode()] for text in texts]


def test_labels_mask_exactly_the_prompt_positions() -> None:
    input_ids, labels = encode_pair([5, 6, 7], [8, 9], EOS, max_len=6)
    assert input_ids == [5, 6, 7, 8, 9, EOS]
    assert labels == [IGNORE_INDEX] * 3 + [8, 9, EOS]  # the loss is on the response and the final EOS
    assert [i for i, label in enumerate(labels) if label == IGNORE_INDEX] == [0, 1, 2]
    assert encode_pair([], [8], EOS, max_len=2) == ([8, EOS], [8, EOS])  # an empty prompt masks nothing


def test_a_pair_longer_than_the_context_is_dropped_not_truncated() -> None:
    assert encode_pair([1, 2, 3], [4, 5], EOS, max_len=6) is not None  # exactly the context fits
    assert encode_pair([1, 2, 3], [4, 5], EOS, max_len=5) is None


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_jsonl_rows_are_read_and_each_bad_row_is_counted_by_reason(tmp_path: Path) -> None:
    ok = {"prompt": "def f():\n", "response": "    return 1\n", "extra": "ignored"}
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            json.dumps(ok),
            "",  # blank: no record, not counted
            '{"prompt": "def g():\\n", "response": ',  # truncated
            "[1, 2]",  # JSON, but not an object
            b'{"prompt": "\xff", "response": "x"}',  # not UTF-8
            json.dumps({"prompt": "def h():\n"}),
            json.dumps({"prompt": None, "response": "    return 2\n"}),
            json.dumps({"prompt": "def i():\n", "response": 3}),
            json.dumps({"prompt": "def j():\n", "response": " \n\t"}),
            json.dumps({"prompt": "", "response": "print(1)\n"}),  # an empty prompt is a valid pair
        ],
    )
    rows, drops = read_records(path)
    assert rows == [
        {"prompt": "def f():\n", "response": "    return 1\n", "suffix": ""},
        {"prompt": "", "response": "print(1)\n", "suffix": ""},
    ]
    assert drops == {"empty_response": 1, "missing_field": 3, "not_json": 3}


def test_preference_records_need_a_prompt_and_two_answers(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "preferences.jsonl",
        [
            json.dumps({"prompt": "def f():\n", "chosen": "    return 1\n", "rejected": "    return 2\n", "problem_id": "x"}),
            json.dumps({"prompt": "def g():\n", "chosen": "    return 1\n"}),
            json.dumps({"prompt": "def h():\n", "chosen": "    return 1\n", "rejected": "  "}),
        ],
    )
    rows, drops = read_records(path, PREFERENCE_FIELDS)
    assert rows == [{"prompt": "def f():\n", "chosen": "    return 1\n", "rejected": "    return 2\n", "suffix": ""}]
    assert drops == {"empty_response": 1, "missing_field": 1}


def test_parquet_files_and_directories_are_read_with_null_fields_counted(tmp_path: Path) -> None:
    table = pa.table({"prompt": ["def f():\n", "def g():\n", None], "response": ["    return 1\n", "", "    return 3\n"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    rows, drops = read_records(tmp_path / "pairs.parquet")
    assert rows == [{"prompt": "def f():\n", "response": "    return 1\n", "suffix": ""}]
    assert drops == {"empty_response": 1, "missing_field": 1}

    spark_style = tmp_path / "pairs"  # a directory of part files, as a Spark job writes it
    spark_style.mkdir()
    pq.write_table(table.slice(0, 1), spark_style / "part-00000.parquet")
    pq.write_table(table.slice(1), spark_style / "part-00001.parquet")
    assert read_records(spark_style) == (rows, drops)


def test_object_store_urls_are_read_through_fsspec() -> None:
    fs = fsspec.filesystem("memory")
    with fs.open("/sft/pairs.jsonl", "w") as fh:
        fh.write(json.dumps({"prompt": "p", "response": "r"}) + "\nnot json\n")
    assert read_records("memory://sft/pairs.jsonl") == ([{"prompt": "p", "response": "r", "suffix": ""}], {"not_json": 1})
    with fs.open("/sft/pairs.parquet", "wb") as fh:
        pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), fh)
    assert read_records("memory://sft/pairs.parquet") == ([{"prompt": "p", "response": "r", "suffix": ""}], {})


def test_bad_inputs_fail_with_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("prompt,response\n")
    with pytest.raises(InputError, match=r"pairs.csv has an unknown format; use JSONL \(.jsonl\) or parquet"):
        read_records(tmp_path / "pairs.csv")
    with pytest.raises(InputError, match="missing.jsonl not found"):
        read_records(tmp_path / "missing.jsonl")
    pq.write_table(pa.table({"prompt": ["p"], "completion": ["c"]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match=r"lack columns \['response'\]"):
        read_records(tmp_path / "other.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="cannot read parquet records .*corrupt.parquet"):
        read_records(tmp_path / "corrupt.parquet")


def test_encode_pairs_masks_each_prompt_and_merges_every_drop_reason(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"prompt": "ab", "response": "c"}),
            "{",
            json.dumps({"response": "x"}),
            json.dumps({"prompt": "p", "response": ""}),
            json.dumps({"prompt": "a" * 10, "response": "b" * 10}),  # 21 tokens with EOS
            json.dumps({"prompt": "abc", "response": "de"}),
        ],
    )
    rows, drops = read_records(path)
    examples, counts = encode_pairs(rows, byte_ids, EOS, max_len=8, drops=drops)
    assert counts == {"empty_response": 1, "missing_field": 1, "not_json": 1, "too_long": 1}
    assert len(examples) + sum(counts.values()) == 6  # every record is encoded or dropped with a reason
    a, b, c, d, e = (ord(ch) + 1 for ch in "abcde")
    assert examples == [
        ([a, b, c, EOS], [IGNORE_INDEX, IGNORE_INDEX, c, EOS]),
        ([a, b, c, d, e, EOS], [IGNORE_INDEX] * 3 + [d, e, EOS]),
    ]
    assert encode_pairs([], byte_ids, EOS, max_len=8) == ([], {})


def test_mds_examples_train_on_the_response_tokens_only(tmp_path: Path) -> None:
    import torch
    from streaming import StreamingDataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from lathe.training.posttrain.sft_data import collate_examples, write_examples

    rows = [{"prompt": "def f():\n", "response": "    return 1\n"}, {"prompt": "x = ", "response": "2"}]
    examples, drops = encode_pairs(rows, byte_ids, EOS, max_len=64)
    assert drops == {} and write_examples(examples, str(tmp_path / "sft")) == 2
    dataset = StreamingDataset(local=str(tmp_path / "sft"), shuffle=False, batch_size=2)
    batch = collate_examples(pad_id=300)([dataset[0], dataset[1]])
    longest = len(examples[0][0])
    assert batch["input_ids"].shape == (2, longest)  # padded to the longest example, not to a context
    assert batch["input_ids"][0].tolist() == examples[0][0] and batch["labels"][0].tolist() == examples[0][1]
    short = len(examples[1][0])
    assert batch["input_ids"][1, short:].eq(300).all() and batch["labels"][1, short:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == [longest, short]

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=301,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        )
    )
    out = model(**batch)
    # The model's loss is the mean cross-entropy over the response tokens and EOS, nothing else.
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    response = labels != IGNORE_INDEX
    assert int(response.sum()) == sum(len(r["response"].encode()) + 1 for r in rows)
    manual = torch.nn.functional.cross_entropy(logits[response], labels[response])
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    real = batch["attention_mask"][:, 1:].bool()
    unmasked = torch.nn.functional.cross_entropy(logits[real], batch["input_ids"][:, 1:][real])
    assert abs(unmasked.item() - out.loss.item()) > 1e-4  # the prompt tokens would change it


def test_the_gateways_fill_in_the_middle_feedback_trains_on_the_prompt_the_served_model_sees(tmp_path: Path) -> None:
    from lathe.core.fim import FimIds

    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"prompt": "ab", "suffix": "z", "chosen": "c", "rejected": "d", "language": "python"}),  # as exported
            json.dumps({"prompt": "ab", "suffix": None, "chosen": "c", "rejected": "d"}),
            json.dumps({"prompt": "ab", "suffix": 3, "chosen": "c", "rejected": "d"}),
        ],
    )
    rows, drops = read_records(path, PREFERENCE_FIELDS)
    assert [r["suffix"] for r in rows] == ["z", ""] and drops == {"missing_field": 1}
    fim = FimIds(prefix=-1, middle=-2, suffix=-3)
    examples, counts = encode_pairs(
        [{"prompt": "ab", "suffix": "z", "response": "c"}, {"prompt": "ab", "response": "c"}], byte_ids, EOS, max_len=16, fim=fim
    )
    a, b, c, z = (ord(ch) + 1 for ch in "abcz")
    assert examples[0] == ([-1, a, b, -3, z, -2, c, EOS], [IGNORE_INDEX] * 6 + [c, EOS])  # PSM, loss on the middle only
    assert examples[1] == ([a, b, c, EOS], [IGNORE_INDEX] * 2 + [c, EOS]) and counts == {}
    with pytest.raises(ValueError, match="FIM ids"):
        encode_pairs([{"prompt": "ab", "suffix": "z", "response": "c"}], byte_ids, EOS, max_len=16)
