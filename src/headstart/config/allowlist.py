"""What headstart builds from a file it reads: an export's ``headstart_export.json`` is data.

Hydra's ``instantiate`` calls whatever a node's ``_target_`` names, nested nodes included, and
resolves ``${...}`` interpolations first (``${oc.create:...}`` makes new nodes, ``${oc.env:...}``
reads the environment). An export is a directory users download and pass around, so before anything
read from one goes to ``instantiate``, :func:`check_buildable` walks it and refuses, naming the file
and the key:

- a ``_target_`` that is not one of headstart's own classes of that kind: the data modules
  (:func:`data_module_targets`) or the downstream heads (:func:`head_targets`). Both lists come from
  the registered schemas (:data:`headstart.config.schema.SCHEMAS`), so a new data module or head
  with its schema is admitted without an edit here;
- Hydra's other instantiation keys (``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``, any
  ``_name_``): headstart's own configs record none of them in an export;
- an interpolation (a string with ``${``): an export is written resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.config.schema import SCHEMAS, HeadConfig
from headstart.errors import CheckpointError

TARGET = "_target_"
ADVICE = ("If headstart made this export, export it again with this version (a fine-tuning run writes it); "
           "otherwise do not use it: it may come from a source that is not to be trusted.")


def schema_targets(group: str, kind: type = object) -> frozenset[str]:
    """The ``_target_`` of every registered schema of ``group`` that is a ``kind``."""
    return frozenset(cls._target_ for (g, _), cls in SCHEMAS.items()
                     if g == group and issubclass(cls, kind) and isinstance(getattr(cls, TARGET, None), str))


def data_module_targets() -> frozenset[str]:
    """headstart's data modules: the targets of the ``schema/data`` schemas."""
    return schema_targets("schema/data")


def head_targets() -> frozenset[str]:
    """headstart's downstream heads (what a head export holds): the ``schema/task`` schemas that are
    head configs (:class:`~headstart.config.schema.HeadConfig`)."""
    return schema_targets("schema/task", HeadConfig)


def _shown(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_buildable(node: Any, allowed: frozenset[str], source: str | Path, key: str, what: str = "classes") -> None:
    """Refuse (:class:`~headstart.errors.CheckpointError`, naming ``source`` and the key) a node read
    from ``source`` at ``key`` that would build anything but one of ``allowed`` (``what`` says what
    they are: "data modules", "heads"), nested nodes included. ``node`` itself must be a mapping whose
    ``_target_`` is one of ``allowed``; with ``allowed`` empty, a mapping that builds nothing."""
    if not isinstance(node, dict):
        raise CheckpointError(f"{source}: {key} is {_shown(node)}, not a mapping of settings. {ADVICE}")
    if allowed and TARGET not in node:
        raise CheckpointError(f"{source}: {key} has no {TARGET}: it names no class of headstart's to build. {ADVICE}")
    _walk(node, allowed, str(source), key, what)


def _walk(node: Any, allowed: frozenset[str], source: str, key: str, what: str) -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            at = f"{key}.{name}"
            if name == TARGET:
                if not isinstance(value, str) or value not in allowed:
                    listed = ", ".join(sorted(t.rsplit(".", 1)[-1] for t in allowed))
                    only = f"only headstart's own {what} ({listed})" if allowed else "nothing"
                    raise CheckpointError(
                        f"{source}: {at} is {_shown(value)}, which headstart does not build from an export: "
                        f"{only} may be built from {key.split('.')[0].split('[')[0]}. {ADVICE}")
            elif not isinstance(name, str) or (len(name) > 2 and name.startswith("_") and name.endswith("_")):
                raise CheckpointError(
                    f"{source}: {at} is a Hydra instantiation key, which would change what is called or how; "
                    f"headstart's exports record none, and none is taken from a file. {ADVICE}")
            _walk(value, allowed, source, at, what)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _walk(value, allowed, source, f"{key}[{i}]", what)
    elif isinstance(node, str) and "${" in node:
        raise CheckpointError(
            f"{source}: {key} is {_shown(node)}, an interpolation, which would be resolved as the config is built "
            f"(reading the environment or making new nodes); headstart writes its exports resolved. {ADVICE}")
