"""Corpora of crystal text: sources -> canonical text -> tokens -> ``datasets.DatasetDict``.

Sources (any mix, one argument each):

- a folder of CIF files (``*.cif``, searched recursively);
- a table with a ``cif`` column: CSV, Parquet or JSON lines (``.csv``, ``.parquet``, ``.jsonl``);
  the other columns are kept, as JSON, in the ``properties`` column (never in the text);
- pymatgen JSON (``.json``): one Structure, a list of them, a list of ``{"structure": ..., ...}``
  records or a mapping id -> Structure;
- ``"aflow-prototypes"``: the built-in default corpus (:func:`crystext.builtin.aflow_prototypes`);
- a Matbench table (``*.json.bz2`` in pandas "columns" orientation, or any table with
  ``composition`` and ``spg_num`` columns and no ``cif``): each row becomes a *partial document*,
  the header part of the text form (``kind="header"``: ``data_`` line, space group, formulas,
  ``Z``; no cell, no sites). Target columns are dropped entirely: they are in neither the text nor
  ``properties`` (only ``crys_sys`` is kept there).

The package is split by job: :mod:`.sources` (streaming readers, also the table / CIF-folder
readers other modules share), :mod:`.headers` (header documents), :mod:`.build` (conversion over a
process pool into restartable Arrow shards, dedupe, split, ``save_to_disk``) and :mod:`.stats`
(token counts and coverage reports) and :mod:`.pack`
(corpus folders packed into one small file for travel, and back). Every record is converted on its own; a bad one is skipped
and counted with its reason, so one record never stops a build.
"""

from .build import (
    BUILD_DIR,
    DEDUPE_MODES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SHARD_SIZE,
    SPLIT_MODES,
    SPLITS,
    build_corpus,
    dedupe_key,
    features,
    load_corpus,
    match_group,
    print_summary,
    resolve_tokenizer,
    split_of,
    text_fields,
)
from .headers import CENTERING, header_lines, header_text
from .pack import pack_corpus, unpack_corpus
from .exclude import exclude_structures, held_out_hashes
from .retokenize import retokenize_corpus
from .sources import (
    HEADER_KEEP,
    ID_COLUMNS,
    TABLE_SUFFIXES,
    Record,
    Source,
    iter_cif_folder,
    iter_records,
    iter_table_chunks,
    iter_table_records,
    open_source,
    open_sources,
    table_columns,
    table_num_rows,
)
from .stats import add_counts, coverage_markdown, formula_elements, reference_elements, token_counts

__all__ = [
    "BUILD_DIR", "CENTERING", "DEDUPE_MODES", "DEFAULT_MAX_TOKENS", "DEFAULT_SHARD_SIZE", "HEADER_KEEP",
    "ID_COLUMNS", "SPLITS", "SPLIT_MODES", "TABLE_SUFFIXES", "Record", "Source", "build_corpus",
    "add_counts", "coverage_markdown", "dedupe_key", "features", "formula_elements", "header_lines", "header_text",
    "iter_cif_folder", "iter_records", "iter_table_chunks", "iter_table_records", "load_corpus",
    "match_group", "open_source", "pack_corpus", "unpack_corpus", "open_sources", "print_summary", "reference_elements",
    "resolve_tokenizer", "split_of", "table_columns", "table_num_rows", "text_fields", "token_counts",
]
