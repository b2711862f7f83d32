"""Reading one params file within bounds: a regular file of at most ``MAX_BYTES``, whose YAML
expands (aliases counted every time they are used) to at most ``MAX_NODES`` values, nested at
most ``MAX_DEPTH`` deep. A file past a bound is refused naming the key where it grows, before
pydantic or ``params_hash()`` ever see the expanded values (a YAML alias bomb of a few hundred
bytes expands to billions)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from tasks.config.base import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB: a params file is a few KB
MAX_NODES = 100_000  # values after expanding aliases: a few hundred in a real file
MAX_DEPTH = 64


def read_bounded(file: Path, limit: int = MAX_BYTES) -> str:
    """The text of ``file``, a regular file of at most ``limit`` bytes; ConfigError otherwise
    (a folder, a device such as /dev/zero, a FIFO, a huge file, bytes that are not UTF-8)."""
    try:
        with file.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                raise ConfigError(f"{file} is {kind}: expected a params.yaml file")
            data = fh.read(limit + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"{file} not found: run from the project root or pass its path") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{file} is a folder: expected a params.yaml file") from exc
    except OSError as exc:
        raise ConfigError(f"{file} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ConfigError(f"{file} is over {limit} bytes: expected a params.yaml of a few KB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file} is not UTF-8 text: {exc}") from exc


def _key(path: list[str]) -> str:
    return ".".join(path) or "<root>"


def _check_expansion(root: yaml.Node, file: Path, max_nodes: int, max_depth: int) -> None:
    """Refuse a node graph that expands past ``max_nodes`` values or ``max_depth`` levels.

    Sizes are counted on the composed graph (an alias is the node it names, shared), each
    node once with memoization, so the check costs the size of the file, not of its expansion.
    """
    sizes: dict[int, int] = {}

    def children(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
        if isinstance(node, yaml.MappingNode):
            out = []
            for k, v in node.value:
                name = str(k.value) if isinstance(k, yaml.ScalarNode) else "<key>"
                out += [(name, k), (name, v)]
            return out
        if isinstance(node, yaml.SequenceNode):
            return [(f"[{i}]", v) for i, v in enumerate(node.value)]
        return []

    def size(node: yaml.Node, path: list[str]) -> int:
        if len(path) > max_depth:
            raise ConfigError(
                f"{file}: {_key(path[:max_depth])} nests deeper than {max_depth} levels"
            )
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = max_nodes + 1  # a cycle (a node holding itself) never ends
        total = 1
        for name, child in children(node):
            total += size(child, [*path, name])
            if total > max_nodes:
                break
        sizes[id(node)] = min(total, max_nodes + 1)
        return sizes[id(node)]

    if size(root, []) <= max_nodes:
        return
    path: list[str] = []  # descend to where it grows: the key whose value alone is too big
    node = root
    while True:
        big = [(n, c) for n, c in children(node) if sizes.get(id(c), 0) > max_nodes]
        if not big or not isinstance(node, yaml.MappingNode):
            break
        name, node = big[-1]
        path.append(name)
    raise ConfigError(
        f"{file}: {_key(path)} expands to more than {max_nodes} values (YAML aliases are "
        "counted each time they are used): write the values out, or simplify the anchors"
    )


def load_yaml_bounded(
    file: Path,
    text: str,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
    loader_class: type[yaml.SafeLoader] = yaml.SafeLoader,
) -> Any:
    """``text`` loaded by ``loader_class`` (a SafeLoader), refused with ConfigError past the
    bounds, which are checked on the node graph before anything is constructed."""
    loader = loader_class(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError as exc:
            raise ConfigError(f"{file}: nests deeper than {max_depth} levels") from exc
        if node is None:
            return None
        _check_expansion(node, file, max_nodes, max_depth)
        return loader.construct_document(node)
    finally:
        loader.dispose()
