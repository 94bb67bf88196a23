"""The import graph of fastnets points one way (docs/ARCHITECTURE.md).

Every `import` in `fastnets/` and `kernels/` is read from the source (module-level and inside
functions alike, so a lazy import cannot hide a cycle), and the test fails on

* an import from a lower layer to a higher one (data < kernels < ops < nn < models < train),
* a kernel importing anything of fastnets but the leaf modules,
* a leaf module importing anything but other leaves,
* a module of fastnets that belongs to no layer (classify it below),
* a cycle among fastnets modules,
* one module importing another module's private (`_name`) names.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Leaf modules: any layer (and the kernels) may import them; they import only each other.
LEAVES = ("fastnets", "fastnets.benchmarking", "fastnets.checks", "fastnets.evidence",
          "fastnets.sparse_format")
LAYERS = ("data", "kernels", "ops", "nn", "models", "train")


def _module_files() -> dict[str, pathlib.Path]:
  files = {}
  for top, prefix in ((ROOT / "fastnets", "fastnets"), (ROOT / "kernels", "fastnets.kernels")):
    for path in top.rglob("*.py"):
      parts = list(path.relative_to(top).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      files[".".join([prefix] + parts)] = path
  return files


MODULES = _module_files()


def _resolve(name: str) -> str | None:
  """The fastnets module that `name` (a module or a name in a module) refers to."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imports(module: str) -> list[tuple[str, str, int]]:
  """(imported module, imported name or "", line) of every fastnets import in `module`."""
  tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
  package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("fastnets")]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      if not base.startswith("fastnets"):
        continue
      for a in node.names:
        full = f"{base}.{a.name}"
        out.append((full if full in MODULES else base, "" if full in MODULES else a.name,
                    node.lineno))
  return out


def _layer(module: str) -> str | None:
  if module in LEAVES:
    return "leaf"
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _rank(layer: str) -> int:
  return -1 if layer == "leaf" else LAYERS.index(layer)


def test_every_module_has_a_layer():
  missing = sorted(m for m in MODULES if _layer(m) is None)
  assert not missing, f"modules in no layer (add them to LEAVES or a layer package): {missing}"


def test_imports_point_down():
  bad = []
  for module in MODULES:
    src = _layer(module)
    for target, _, line in _imports(module):
      dst = _layer(_resolve(target) or target)
      if dst is None:
        continue  # reported by test_every_module_has_a_layer
      where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
      if src == "leaf" and dst != "leaf":
        bad.append(f"{where} (a leaf module imports only leaves)")
      elif src == "kernels" and dst not in ("leaf", "kernels"):
        bad.append(f"{where} (kernels import only leaf modules)")
      elif _rank(dst) > _rank(src):
        bad.append(f"{where} ({src} is below {dst})")
  assert not bad, "upward imports:\n" + "\n".join(bad)


def _module_aliases(module: str) -> dict[str, str]:
  """Local names bound to other fastnets modules (`from fastnets.ops import rounding as r`)."""
  aliases = {}
  for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastnets"):
      for a in node.names:
        if f"{node.module}.{a.name}" in MODULES:
          aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.asname and a.name in MODULES:
          aliases[a.asname] = a.name
  return aliases


def test_no_private_names_across_modules():
  bad = []
  for module in MODULES:
    rel = MODULES[module].relative_to(ROOT)
    for target, name, line in _imports(module):
      owner = _resolve(target)
      if name.startswith("_") and owner != module:
        bad.append(f"{rel}:{line} imports {name} from {owner}")
    aliases = _module_aliases(module)
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__") and aliases[node.value.id] != module):
        bad.append(f"{rel}:{node.lineno} uses {node.value.id}.{node.attr} of "
                   f"{aliases[node.value.id]}")
  assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_no_import_cycles():
  # Explicit imports only: a package's __init__ importing its submodules is how packages work;
  # a submodule importing its own package back (`from fastnets.ops import fwht` inside ops) is a
  # cycle and is reported.
  graph = {m: sorted({_resolve(t) for t, _, _ in _imports(m)} - {None, m}) for m in MODULES}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in graph[m]:
      if state.get(n) == "open":
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["fastnets.kernels.sparse_conv", "fastnets.kernels.hadamard",
                                    "fastnets.kernels.autotune"])
def test_kernels_import_without_ops(module):
  # Guards the test itself: these are the modules that used to import ops.
  assert module in MODULES
  assert all(_layer(_resolve(t)) in ("leaf", "kernels") for t, _, _ in _imports(module))
