"""How alike the graded functions of a class are: to each other and to genlab's own code.

Information for the instructor to read side by side, never a penalty: two correct
answers to a short, tightly specified exercise are often alike.

The measure is an AST-normalised token comparison:

1. parse the function (``ast``), drop its docstring and every other bare string
   statement (comments are gone with parsing), drop annotations; every string constant
   (an error message, say) becomes one placeholder;
2. rename what the author chose: the function's own name, its parameters and every name
   it binds (locals, loop variables, comprehension variables, inner functions) become
   ``_0, _1, ...`` in order of first appearance; names it reads from outside (``torch``,
   ``math``, ``len``) and attribute names (``.transpose``, ``.softmax``) stay, since they
   are the API it calls, not a choice of words;
3. ``ast.unparse`` the result and cut it into Python tokens (formatting, brackets and
   spacing are thereby normalised too);
4. similarity = Jaccard index of the two sets of token n-grams (``NGRAM`` tokens long).

Why not ``copydetect`` (PyPI; winnowed fingerprints of k-token windows, every identifier
renamed to ``V``): tried on attention's ``scaled_dot_product_attention`` (the solution, a
copy of it with renamed variables and reworded comments, two versions written
independently, genlab's own) and on the one-line ``causal_mask``. With its default k = 25 it
separates the copy (1.00) from independent work (0.12 to 0.31), but a renamed copy of
``causal_mask`` scores 0 (too few tokens for one window) and so does every version against
genlab's longer implementation; with k = 5 everything scores 0.46 to 1.00 (the shared
library calls dominate). Its scores are one per side (asymmetric). The measure here gives
1.00 for the copy (its reworded error message included), 0.11 to 0.18 between independent
versions, 1.00 for the renamed one-line copy, and needs no dependency.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import io
import itertools
import tokenize
from dataclasses import dataclass

NGRAM = 4          # tokens per n-gram
THRESHOLD = 0.6    # pairs at or above this are shown side by side


class _Renamer(ast.NodeTransformer):
    """Rename the names a function binds (and its own name) to _0, _1, ... in order of
    first appearance; drop docstrings, bare strings and annotations."""

    def __init__(self, bound: set[str]):
        self.bound = bound
        self.names: dict[str, str] = {}

    def _new(self, name: str) -> str:
        if name not in self.bound:
            return name
        return self.names.setdefault(name, f"_{len(self.names)}")

    def visit_FunctionDef(self, node):
        node.name = self._new(node.name)
        node.returns = None
        node.decorator_list = []
        node.body = [s for s in node.body  # the docstring and other bare strings
                     if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                             and isinstance(s.value.value, str))] or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node):
        node.arg = self._new(node.arg)
        node.annotation = None
        return node

    def visit_Name(self, node):
        node.id = self._new(node.id)
        return node

    def visit_Constant(self, node):
        return ast.Constant("<str>") if isinstance(node.value, str) else node

    def visit_AnnAssign(self, node):
        if node.value is None:
            return None
        return ast.copy_location(ast.Assign(targets=[self.visit(node.target)], value=self.visit(node.value)), node)


def _bound_names(function: ast.AST) -> set[str]:
    """What the code chose to call things: the function's name, its parameters, and every
    name it assigns or defines."""
    bound = set()
    for node in ast.walk(function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
    return bound - set(dir(builtins))


def normalise(source: str) -> str:
    """The first function (or class) in ``source``, as the comparison sees it."""
    tree = ast.parse(inspect.cleandoc(source) if source.startswith((" ", "\t")) else source)
    function = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                            ast.ClassDef))), None)
    if function is None:
        raise ValueError("no function definition in the source")
    return ast.unparse(_Renamer(_bound_names(function)).visit(function))


def tokens(normalised: str) -> list[str]:
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
            tokenize.COMMENT}
    words = []
    for token in tokenize.generate_tokens(io.StringIO(normalised).readline):
        if token.type == tokenize.INDENT:
            words.append("{")
        elif token.type == tokenize.DEDENT:
            words.append("}")
        elif token.type not in skip:
            words.append(token.string)
    return words


def ngrams(words: list[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def similarity(a: str, b: str, n: int = NGRAM) -> float:
    """Jaccard index of the token n-grams of two functions' normalised sources (0..1)."""
    grams_a, grams_b = ngrams(tokens(normalise(a)), n), ngrams(tokens(normalise(b)), n)
    if not grams_a and not grams_b:
        return 1.0
    return len(grams_a & grams_b) / len(grams_a | grams_b)


@dataclass
class Pair:
    """Two authors' versions of one function and how alike they are."""
    function: str
    first: str          # a student id, or "genlab" for the library's own implementation
    second: str
    score: float
    first_source: str
    second_source: str


def compare_class(sources: dict[str, dict[str, str]], references: dict[str, str],
                  stubs: dict[str, str] | None = None) -> list[Pair]:
    """Every pair of students, and every student with genlab, per function.

    ``sources``: student -> function -> source; ``references``: function -> genlab's
    source; ``stubs``: function -> the released stub (a function left as released is not
    the student's work and is compared with nothing). Sorted by score, highest first."""
    stubs = stubs or {}
    stub_forms = {f: normalise(s) for f, s in stubs.items()}

    def written(student: str, function: str) -> str | None:
        source = sources[student].get(function)
        if source is None:
            return None
        try:
            form = normalise(source)
        except (SyntaxError, ValueError):
            return None
        return None if stub_forms.get(function) == form else source

    pairs = []
    functions = sorted({f for by_function in sources.values() for f in by_function} | set(references))
    for function in functions:
        authors = {s: written(s, function) for s in sorted(sources)}
        authors = {s: src for s, src in authors.items() if src is not None}
        if function in references:
            for student, source in authors.items():
                pairs.append(Pair(function, student, "genlab", similarity(source, references[function]),
                                  source, references[function]))
        for (s1, src1), (s2, src2) in itertools.combinations(authors.items(), 2):
            pairs.append(Pair(function, s1, s2, similarity(src1, src2), src1, src2))
    return sorted(pairs, key=lambda p: (-p.score, p.function, p.first, p.second))


__all__ = ["normalise", "similarity", "compare_class", "Pair", "THRESHOLD", "NGRAM"]
