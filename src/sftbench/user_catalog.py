"""User catalogs (`--sftbench-catalog FILE`): tables of one's own rows, in catalog.toml's shape, of the zoo's models
or of any causal LM that transformers builds natively, named by a local config.json:

    [models.qwen2.5-7b-instruct]                    # its name is the rows' model_type
    config = "configs/qwen2.5-7b-instruct.json"     # a config.json, or a folder holding one; relative to this file
    weights = "/models/Qwen2.5-7B-Instruct"         # optional: its bf16 rows train from this checkpoint folder
    lora_default = ["q_proj", "k_proj", "v_proj"]   # optional: DEFAULT's targets; lora_all: ALL's

    [defaults]                                      # optional, over the seed's [defaults]
    [[tables]]                                      # name and rows; title, columns and device as the seed's

Every row is a case of USER_TEST, its id `<table>-<row id>`. Whatever is wrong is one CatalogError line naming the
file, the table and row or the model, and the field, raised as the catalogs are loaded, before any case starts.
Loading builds each model of a catalog on the meta device (imports torch and transformers).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from sftbench.catalog import ROW_FIELDS, CatalogError, Table, read_table, seed_defaults
from sftbench.models import MODELS
from sftbench.models.user import UnusableConfig, user_model_entry
from sftbench.spec import UserModel

CATALOG_KEYS = ("models", "defaults", "tables")
TABLE_KEYS = ("name", "title", "columns", "device", "rows")  # no `test`: every user row is a case of test_user_rows
MODEL_KEYS = ("config", "weights", "lora_default", "lora_all")
MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")  # it names baseline files (CaseSpec.key)


def load(paths: list[str | Path]) -> tuple[Table, ...]:
    """The tables of these catalogs, in order; CatalogError at the first problem, across catalogs too: a model
    defined twice otherwise, a test id twice."""
    tables: list[Table] = []
    defined: dict[str, tuple[Path, dict]] = {}  # model name -> (its catalog, its CaseSpec fields)
    node_ids: dict[str, Path] = {}
    for path in map(Path, paths):
        models, file_tables = _load_file(path)
        for name, fields in models.items():
            first, first_fields = defined.setdefault(name, (path, fields))
            if first_fields != fields:
                raise CatalogError(f"{path}: model {name!r} is defined otherwise in {first}: give one of them "
                                   "another name (a model's name keys its baselines)")
        for t in file_tables:
            for row in t.rows:
                if row.node_id in node_ids:
                    raise CatalogError(f"{path}: table {t.name!r} row {_row_id(t, row.id)!r}: its test id "
                                       f"{row.node_id} is already a row of {node_ids[row.node_id]}")
                node_ids[row.node_id] = path
        tables += file_tables
    return tuple(tables)


def _load_file(path: Path) -> tuple[dict[str, dict], list[Table]]:
    """(the CaseSpec fields of each model of the catalog, by name; its tables)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CatalogError(f"{path}: cannot read it: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CatalogError(f"{path}: not TOML: {error}") from None
    _check_keys(path, "the catalog", data, CATALOG_KEYS)
    models = {name: _model(path, name, fields) for name, fields in _section(path, data, "models").items()}
    defaults = _section(path, data, "defaults")
    _check_keys(path, "[defaults]", defaults, [key for key in ROW_FIELDS if key != "id"])
    entries = data.get("tables", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise CatalogError(f"{path}: tables must be [[tables]] sections")
    tables = []
    for entry in entries:
        _check_table(path, entry)
        try:
            t = read_table(entry, {**seed_defaults(), **defaults}, models)
        except CatalogError as error:
            raise CatalogError(f"{path}: {error}") from None
        for row in t.rows:
            if row.spec.user_model is None and row.spec.model_type not in MODELS:
                raise CatalogError(f"{path}: table {t.name!r} row {_row_id(t, row.id)!r}: unknown model_type "
                                   f"{row.spec.model_type!r}; this catalog's models: {', '.join(models) or 'none'}; "
                                   f"built-in: {', '.join(MODELS)}")
        tables.append(t)
    return models, tables


def _model(path: Path, name: str, fields) -> dict:
    """The CaseSpec fields of the rows of the catalog's model `name`, once its config has made a model."""
    where = f"{path}: model {name!r}"
    if not isinstance(fields, dict):
        raise CatalogError(f"{where}: must be a [models.{name}] section")
    _check_keys(path, f"model {name!r}", fields, MODEL_KEYS)
    if name in MODELS:
        raise CatalogError(f"{where}: a built-in model type has this name; give this model another")
    if not MODEL_NAME.fullmatch(name):
        raise CatalogError(f"{where}: a model's name is letters, digits, '.', '_' and '-' (it names baseline files)")
    config = _path(where, fields, "config", path.parent)
    if config is None:
        raise CatalogError(f"{where}: no config (the path of its config.json)")
    if config.is_dir():
        config = config / "config.json"
    lists = {key: _names(where, fields, key) for key in ("lora_default", "lora_all")}
    model = UserModel(str(config), **lists)
    try:
        user_model_entry(name, model)
    except UnusableConfig as error:
        raise CatalogError(f"{where}: config {config}: {error}") from None
    weights = _path(where, fields, "weights", path.parent)
    if weights is not None and not weights.is_dir():
        raise CatalogError(f"{where}: weights {weights} is not a folder")
    return {"user_model": model} | ({"weights_path": str(weights)} if weights else {})


def _path(where: str, fields: dict, key: str, folder: Path) -> Path | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: {key} must be a path, got {value!r}")
    return (folder / value).resolve()


def _names(where: str, fields: dict, key: str) -> tuple[str, ...] | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(name, str) and name for name in value):
        raise CatalogError(f"{where}: {key} must be a list of module names, got {value!r}")
    return tuple(value)


def _section(path: Path, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise CatalogError(f"{path}: {key} must be a [{key}] section")
    return value


def _check_table(path: Path, entry: dict) -> None:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{path}: a table's name must be a name, got {name!r}")
    _check_keys(path, f"table {name!r}", entry, TABLE_KEYS)
    rows = entry.get("rows")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise CatalogError(f"{path}: table {name!r}: rows must be a list of tables ({{ id = ..., ... }})")
    if not isinstance(entry.get("title", ""), str):
        raise CatalogError(f"{path}: table {name!r}: title must be a text, got {entry['title']!r}")
    columns = entry.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(column, str) for column in columns):
        raise CatalogError(f"{path}: table {name!r}: columns must be a list of field names, got {columns!r}")


def _check_keys(path: Path, where: str, data: dict, known) -> None:
    unknown = [key for key in data if key not in known]
    if unknown:
        raise CatalogError(f"{path}: {where}: unknown field {unknown[0]!r}; it has {', '.join(known)}")


def _row_id(t: Table, row_id: str) -> str:
    """The row's id as its catalog writes it (Row.id is `<table>-<row id>`)."""
    return row_id.removeprefix(f"{t.name}-")
