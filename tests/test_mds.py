"""lathe's MDS writer against MosaicML Streaming's own: the same bytes, read back by StreamingDataset."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lathe.core.errors import InputError
from lathe.tokenizer.mds import INDEX, Codec, ShardWriter, under, write_index

SAMPLES = [np.random.default_rng(0).integers(0, 4096, 128).astype(np.uint16) for _ in range(300)]


@pytest.mark.parametrize("compression", ["zstd", "zstd:7", "bz2", None])
def test_shards_and_index_are_byte_identical_to_streaming(tmp_path: Path, compression: str | None) -> None:
    from streaming import MDSWriter

    with MDSWriter(
        out=str(tmp_path / "theirs"), columns={"tokens": "ndarray:uint16:128"}, compression=compression, size_limit=20_000
    ) as theirs:
        for s in SAMPLES:
            theirs.write({"tokens": s})
    ours = ShardWriter(str(tmp_path / "ours"), "tokens", np.uint16, 128, Codec.parse(compression), 20_000)
    for s in SAMPLES:
        ours.write(s)
    shards = ours.finish()
    names = sorted(os.listdir(tmp_path / "theirs"))
    assert len(shards) > 3 and names == sorted(os.listdir(tmp_path / "ours"))  # several shards: the size limit split them
    for name in names:
        assert filecmp.cmp(tmp_path / "theirs" / name, tmp_path / "ours" / name, shallow=False), name


def test_a_merged_index_over_sub_folders_reads_back_in_order(tmp_path: Path) -> None:
    from streaming import StreamingDataset

    entries = []
    for part, chunk in enumerate((SAMPLES[:120], SAMPLES[120:])):
        writer = ShardWriter(str(tmp_path / f"part-{part:05d}"), "tokens", np.uint16, 128, Codec.parse("zstd"), 10_000)
        for s in chunk:
            writer.write(s)
        entries += under(f"part-{part:05d}", writer.finish())
    write_index(entries, str(tmp_path / INDEX))
    ds = StreamingDataset(local=str(tmp_path), shuffle=False, batch_size=1)
    assert len(ds) == len(SAMPLES) and all((ds[i]["tokens"] == SAMPLES[i]).all() for i in range(len(ds)))


def test_writing_imports_neither_streaming_nor_torch(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from lathe.tokenizer.mds import Codec, ShardWriter\n"
        "w = ShardWriter(sys.argv[1], 't', np.uint16, 8, Codec.parse('zstd'), 1 << 20)\n"
        "w.write(np.arange(8)); w.finish()\n"
        "print(sorted(m for m in ('streaming', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "shards")], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]" and list((tmp_path / "shards").iterdir())  # it wrote there


def test_bad_settings_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"shards.compression 'lz5' is not supported; use one of \['bz2', 'gz', 'zstd'\]"):
        Codec.parse("lz5")
    with pytest.raises(InputError, match=r"shards.compression 'zstd:40': zstd levels are 1..22"):
        Codec.parse("zstd:40")
    writer = ShardWriter(str(tmp_path), "tokens", np.uint16, 128, Codec.parse(None), 1 << 20)
    with pytest.raises(ValueError, match="sample of 20 bytes, column tokens holds 256"):
        writer.write(np.arange(10))
