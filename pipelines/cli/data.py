"""`lathe data clean`: clean any parquet by hand with the data stage's library."""

from __future__ import annotations

from pathlib import Path

import typer

from lathe.pipelines.cli.app import OptionalConfigOpt, SetOpt, console, data_app, load


@data_app.command("clean")
def data_clean(
    input: str = typer.Option(..., "--input", "-i", help="Parquet file, directory or glob (`content`, `path` columns)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for kept/, dropped/ and xray/."),
    config: Path | None = OptionalConfigOpt,
    set_: list[str] | None = SetOpt,
) -> None:
    """Clean any parquet by hand: filters, PII redaction, dedup -> OUTPUT/kept, OUTPUT/dropped."""
    from lathe.core.spark import spark_session
    from lathe.data.clean import with_ids
    from lathe.data.pipeline import clean_and_report
    from lathe.data.sources import check_parquet_files, expand_parquet_paths, parquet_dataframe

    cfg = load(config, set_)
    check_parquet_files(expand_parquet_paths([input]))  # fail on bad input before Spark starts
    spark = spark_session(cfg.spark, "lathe-data-clean")
    df = with_ids(parquet_dataframe(spark, [input], "parquet"))
    output.mkdir(parents=True, exist_ok=True)
    _, result = clean_and_report(df, cfg.data, output, console)
    console.print(
        f"kept {result.counts['kept']:,} -> {output / 'kept'}; dropped {result.counts['dropped']:,} -> {output / 'dropped'}"
    )
