"""MLflow's scoring formats: a request body as `mlflow models serve` accepts it, parsed into a checked `Batch`.

JSON bodies hold exactly one of `dataframe_split` (`{"columns": [...], "data": [[...], ...]}`), `dataframe_records`
(`[{column: value}, ...]`), `instances` or `inputs` (records, rows, or `{column: [values]}`); a `params` key is
accepted and ignored, as MLflow does for models without params. `text/csv` bodies have a header row (a leading
unnamed index column, as `DataFrame.to_csv()` writes it, is dropped). Parquet bodies are read with pyarrow.

Parsers are registered by media type (`register`), so another wire format plugs in without touching the routes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

import orjson

from notebench.errors import InvalidInputError, MalformedRequestError
from notebench.serving.schema import Batch, InputSchema

__all__ = ["FORMATS", "MEDIA_TYPES", "parse", "parser_for", "register"]

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")  # MLflow's JSON format keys
IGNORED_KEYS = ("params",)

Parser = Callable[[bytes, InputSchema], Batch]
MEDIA_TYPES: dict[str, Parser] = {}  # media type -> parser


def register(media_type: str, parser: Parser) -> Parser:
    """Make `parser` read request bodies of `media_type`."""
    MEDIA_TYPES[media_type.lower()] = parser
    return parser


def parser_for(content_type: str | None) -> Parser | None:
    """The parser of a Content-Type header (JSON when absent); None when the type or its charset is not served."""
    if not content_type:
        return MEDIA_TYPES["application/json"]
    media, *params = (part.strip() for part in content_type.split(";"))
    options = dict(p.partition("=")[::2] for p in params if p)
    if options.get("charset", "utf-8").strip('"').lower() not in ("utf-8", "utf8"):
        return None
    return MEDIA_TYPES.get(media.lower())


def parse(body: bytes, content_type: str | None, schema: InputSchema) -> Batch:
    """The checked batch of a request body; `MalformedRequestError` or `InvalidInputError` says what is wrong."""
    parser = parser_for(content_type)
    if parser is None:
        raise MalformedRequestError(f"unsupported content type {content_type!r}; send one of {sorted(MEDIA_TYPES)}")
    return parser(body, schema)


# ---------------------------------------------------------------------------------------------------------
# JSON


def decode_json(body: bytes):
    """The decoded JSON of `body`, or `MalformedRequestError` saying where it breaks.

    orjson decodes (4x faster than the standard library on a 1,000-row body); what it refuses and Python's `json`
    accepts, as MLflow's server does (`NaN` and `Infinity`, which pandas and MLflow's client write for missing
    values; lone surrogates), is decoded again by `json`, which also words the errors. orjson reads an integer
    beyond 64 bits as the nearest float: a double column gets the same number as from `json`, and an integer
    column refuses it either way (see `schema._ints`)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    if not body.strip():
        raise MalformedRequestError("empty payload: the body holds no JSON")
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise MalformedRequestError(f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedRequestError(f"malformed JSON: {exc}") from None


def parse_json(body: bytes, schema: InputSchema) -> Batch:
    """A JSON body in one of MLflow's formats."""
    doc = decode_json(body)
    if not isinstance(doc, dict):
        raise MalformedRequestError(f"the JSON body must be an object with one of the keys {list(FORMATS)}; "
                                    f"got {type(doc).__name__ if doc is not None else 'null'}")
    keys = [k for k in doc if k in FORMATS]
    if len(keys) != 1:
        other = [k for k in doc if k not in FORMATS and k not in IGNORED_KEYS]
        raise MalformedRequestError(f"the JSON body must hold exactly one of the keys {list(FORMATS)}; got "
                                    f"{keys or 'none of them'}" + (f" (and unknown keys {other})" if other else ""))
    key = keys[0]
    return _JSON_FORMATS[key](doc[key], schema)


def _split(value, schema: InputSchema) -> Batch:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise MalformedRequestError('dataframe_split must be an object {"columns": [...], "data": [[...], ...]}')
    columns = value.get("columns")
    if columns is not None and not isinstance(columns, list):
        raise MalformedRequestError("dataframe_split.columns must be a list of column names")
    return schema.from_rows(value["data"], columns)


def _records(value, schema: InputSchema) -> Batch:
    if not isinstance(value, list):
        raise MalformedRequestError("dataframe_records must be a list of objects, one per row")
    return schema.from_records(value)


def _tensor_style(key: str) -> Callable[[object, InputSchema], Batch]:
    """`instances` / `inputs`: records, rows in signature order, or columns."""
    def parse_value(value, schema: InputSchema) -> Batch:
        if isinstance(value, dict):
            return schema.from_columns(value)
        if not isinstance(value, list):
            raise MalformedRequestError(f"{key} must be a list of records or rows, or an object of columns")
        if value and all(isinstance(v, dict) for v in value):
            return schema.from_records(value)
        if value and all(isinstance(v, list) for v in value):
            return schema.from_rows(value)
        if not value:
            raise InvalidInputError("empty payload: no rows to predict")
        raise MalformedRequestError(f"{key} must hold only records (objects) or only rows (lists of "
                                    f"{len(schema.names)} values in the order {schema.names})")
    return parse_value


_JSON_FORMATS = {"dataframe_split": _split, "dataframe_records": _records, "instances": _tensor_style("instances"),
                 "inputs": _tensor_style("inputs")}


# ---------------------------------------------------------------------------------------------------------
# CSV and Parquet


def parse_csv(body: bytes, schema: InputSchema) -> Batch:
    """A CSV body with a header row."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedRequestError(f"the CSV body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        lines = [row for row in csv.reader(io.StringIO(text), strict=True) if row]
    except csv.Error as exc:
        raise MalformedRequestError(f"malformed CSV: {exc}") from None
    if not lines:
        raise MalformedRequestError("empty payload: the CSV body has no header row")
    header, rows = lines[0], lines[1:]
    if header and header[0].strip() == "" and len(header) == len(schema.names) + 1:
        header, rows = header[1:], [row[1:] for row in rows]  # the index column DataFrame.to_csv() writes
    return schema.from_text(header, rows)


def parse_parquet(body: bytes, schema: InputSchema) -> Batch:
    """A Parquet body (as `DataFrame.to_parquet()` writes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(body))
    except (pa.ArrowException, OSError) as exc:
        raise MalformedRequestError(f"malformed Parquet: {exc}") from None
    names = [n for n in table.column_names if not n.startswith("__index_level_")]
    schema.check_names(names)
    return schema.from_columns({n: table.column(n).to_numpy(zero_copy_only=False) for n in schema.names})


register("application/json", parse_json)
register("text/csv", parse_csv)
register("application/vnd.apache.parquet", parse_parquet)
