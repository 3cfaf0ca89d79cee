"""The shape a maintainer relies on: no import circles in the package (imports inside functions
included), no script importing another but the demo, thin scripts and small functions."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))
MAX_SCRIPT_LINES = 120
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
# Functions over the limits, each with the reason its docstring gives.
ALLOWED = {
    ("checkpoint", "make_checkpoint"): "its keyword arguments are its fields, one each",
    ("model", "__init__"): "parameters are the model's config, one each",
}


def _trees(folder):
    return {os.path.basename(p)[:-3]: ast.parse(open(p).read()) for p in sorted(glob.glob(os.path.join(folder, "*.py")))}


def package_imports():
    """{module: set of siamese modules it imports anywhere in its body}."""
    graph, trees = {}, _trees(os.path.join(ROOT, "siamese"))
    for name, tree in trees.items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("siamese."):
                deps.add(node.module.split(".")[1])
        graph[name] = deps & set(trees)
    return graph


def find_circle(graph):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_the_package_has_no_import_circle():
    assert find_circle(package_imports()) is None


def test_the_circle_finder_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_scripts_are_thin_and_import_no_other_script_but_the_demo():
    for name, tree in _trees(ROOT).items():
        lines = len(open(os.path.join(ROOT, name + ".py")).read().splitlines())
        assert lines <= MAX_SCRIPT_LINES, f"{name}.py has {lines} lines"
        if name == "demo":  # it runs the other scripts, as the README's commands do
            continue
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & set(SCRIPTS), f"{name}.py imports {imported & set(SCRIPTS)}"


def test_package_functions_are_small_or_say_why():
    for module, tree in _trees(os.path.join(ROOT, "siamese")).items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += [p.arg for p in (a.vararg, a.kwarg) if p]
            lines = node.end_lineno - node.lineno + 1
            if lines <= MAX_FUNCTION_LINES and len(params) <= MAX_PARAMETERS:
                continue
            reason = ALLOWED.get((module, node.name))
            doc = ast.get_docstring(node) or ast.get_docstring(_class_of(tree, node)) or ""
            assert reason and reason in " ".join(doc.split()), \
                f"siamese/{module}.py: {node.name} has {lines} lines and {len(params)} parameters"


def _class_of(tree, function):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and function in node.body:
            return node
    return ast.Module(body=[], type_ignores=[])
