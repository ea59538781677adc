"""Before/after tests of the source rewrite, on strings alone (no torch, no subprocess)."""

from __future__ import annotations

import ast
import textwrap

import libcst as cst
import pytest

from traincheck_rewrite.rewrite import RewriteError, SiteTable, rewrite_library, rewrite_source
from traincheck_rewrite.rewrite.names import collect_names
from traincheck_rewrite.rewrite.bootstrap import MARKER

BOOT = f"import traincheck_rewrite.runtime.boot as _tc_boot; {MARKER}"


def rw(src: str, **kw) -> str:
    return rewrite_source(textwrap.dedent(src), "t.py", **kw)


def test_wraps_only_the_callee_and_keeps_arguments_verbatim():
    out = rw(
        """\
        import torch
        y = torch.nn.functional.relu(x,  inplace=False)  # keep me
        """
    )
    assert out == f"{BOOT}; import torch\ny = _tc_(1, torch.nn.functional.relu)(x,  inplace=False)  # keep me\n"


def test_docstring_stays_first_and_future_imports_stay_before_the_bootstrap():
    out = rw(
        '''\
        """Doc."""
        from __future__ import annotations
        from __future__ import division
        import torch
        '''
    )
    lines = out.splitlines()
    assert lines[0] == '"""Doc."""'
    assert lines[1] == "from __future__ import annotations"
    assert lines[2] == f"from __future__ import division; {BOOT}"
    assert ast.get_docstring(ast.parse(out)) == "Doc."
    compile(out, "t.py", "exec")


def test_docstring_only_module_gets_bootstrap_on_the_docstring_line():
    out = rw('''"""Doc\nmore."""\nimport torch\n''')
    assert out.splitlines()[1] == f'more."""; {BOOT}'


def test_compound_first_statement_uses_a_blank_line_and_keeps_the_shebang():
    src = "#!/usr/bin/env python\n\nif True:\n    import torch\n    torch.ones(1)\n"
    out = rewrite_source(src, "t.py")
    assert out.splitlines()[:3] == ["#!/usr/bin/env python", BOOT, "if True:"]
    assert "_tc_(1, torch.ones)(1)" in out


def test_coding_cookie_on_line_two_is_never_displaced():
    src = "# first\n# -*- coding: latin-1 -*-\nif True:\n    import torch\n    torch.ones(1)\n".encode("latin-1")
    out = rewrite_source(src, "t.py")
    assert isinstance(out, bytes)
    assert out.splitlines()[:2] == [b"# first", b"# -*- coding: latin-1 -*-"]
    assert b"lazy" in out  # no line could take the import


def test_latin1_source_stays_latin1():
    src = "# -*- coding: latin-1 -*-\nimport torch\ns = 'caf\xe9'\ntorch.ones(1)\n".encode("latin-1")
    out = rewrite_source(src, "t.py")
    assert b"caf\xe9" in out
    assert out.splitlines()[0] == b"# -*- coding: latin-1 -*-"
    compile(out, "t.py", "exec")


def test_file_starting_with_def_gets_the_lazy_hook():
    out = rw(
        """\
        def f():
            import torch
            return torch.ones(1)
        """
    )
    assert '__import__("traincheck_rewrite.runtime.boot", fromlist=("lazy",)).lazy(1, torch.ones)(1)' in out
    assert out.count("\n") == 3


@pytest.mark.parametrize(
    "src",
    [
        "print(len([1]))\n",  # builtins
        "import os\nos.path.join('a', 'b')\n",  # stdlib module attributes
        "def helper(x):\n    return x\nhelper(1)\n",  # the file's own function
        "', '.join(['a'])\n",  # string literal methods
        "x = 1\ndef m():\n    return locals(), globals(), vars(), dir()\n",  # frame-sensitive builtins
    ],
)
def test_calls_that_can_never_reach_torch_are_left_alone(src):
    sites = SiteTable()
    out = rewrite_source(src, "t.py", sites=sites)
    assert sites.sites == {}
    assert out.replace(BOOT + "; ", "") == src


def test_zero_argument_super_is_never_wrapped_but_the_method_call_is():
    out = rw(
        """\
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
        """
    )
    assert "_tc_(1, super().__init__)()" in out
    assert "_tc_(2, super)" not in out


def test_star_import_from_torch_makes_builtin_names_candidates():
    out = rw("from torch import *\nabs(x)\n")
    assert "_tc_(1, abs)(x)" in out


def test_rebound_builtin_is_a_candidate():
    out = rw("import torch\nlen = torch.numel\nlen(x)\n")
    assert "_tc_(1, len)(x)" in out


def test_syntax_forms_keep_lines_and_compile():
    src = textwrap.dedent(
        '''\
        """Doc."""
        import torch
        from torch.nn import *
        @torch.no_grad()
        def f(a=torch.ones(1), *, b=lambda: torch.zeros(1)):
            global G
            if a.sum() > 1:
                pass
            elif (z := torch.ones(2)).sum() > 0:
                return [torch.relu(t) for t in z if t.sum() > 0]
            return f"{torch.sum(a)!r:>10} {'x'}"
        class K:
            w = torch.ones(3)
            def __p(self):
                return self.__q(torch.ones(1))
        async def g(x):
            async with x.lock():
                return await x.fetch(torch.ones(1))
        match torch.ones(1).shape:
            case torch.Size([1]) if torch.ones(1).item() > 0:
                pass
        total = sum(torch.ones(1) for _ in range(3))
        h = (
            torch.cat(  # comment inside
                [torch.ones(1),
                 torch.zeros(1)],
            )
        )
        '''
    )
    sites = SiteTable()
    out = rewrite_source(src, "t.py", sites=sites)
    assert out.count("\n") == src.count("\n")
    compile(out, "t.py", "exec")
    assert "# comment inside" in out
    assert "sum(_tc_(" not in out or "_tc_(" in out
    # every site points at a line whose original text contains the call's text's first line
    src_lines = src.splitlines()
    for site in sites.sites.values():
        assert site["source"].splitlines()[0] in src_lines[site["line"] - 1]
        assert src_lines[site["line"] - 1][site["col"] :].startswith(site["source"].splitlines()[0])


def test_generator_argument_stays_a_generator():
    out = rw("import torch\ntorch.stack(t for t in xs)\n")
    assert "_tc_(1, torch.stack)(t for t in xs)" in out
    compile(out, "t.py", "exec")


def test_torchscript_functions_are_left_as_written():
    out = rw(
        """\
        import torch
        @torch.jit.script
        def f(x):
            return torch.relu(x)
        torch.relu(y)
        """
    )
    assert "return torch.relu(x)" in out
    assert "_tc_(1, torch.relu)(y)" in out


def test_library_mode_names_sites_by_file_line_and_column_and_inserts_no_bootstrap():
    src = b'"""Doc."""\nimport torch\n\ndef f(x):\n    y = torch.relu(x)\n    return f"{torch.sum(y)}"\n'
    out = rewrite_library(src, "/site/lib/mod.py", "lib/mod.py", ("torch",), loops=False)
    # the f-string's call stays: a quoted site cannot go inside it on Python 3.11
    assert out == b'"""Doc."""\nimport torch\n\ndef f(x):\n    y = _tc_("lib/mod.py:5:8", torch.relu)(x)\n    return f"{torch.sum(y)}"\n'


def test_rewrite_is_idempotent():
    src = "import torch\nx = torch.ones(1)\n"
    once = rewrite_source(src, "t.py")
    assert rewrite_source(once, "t.py") == once


def test_sites_are_numbered_across_files():
    sites = SiteTable()
    rewrite_source("import torch\ntorch.ones(1)\n", "a.py", sites=sites)
    out = rewrite_source("import torch\ntorch.zeros(1)\n", "b.py", sites=sites)
    assert "_tc_(2, torch.zeros)" in out
    assert sites.to_json()["2"]["file"] == "b.py"


def test_unparseable_source_names_file_and_line():
    with pytest.raises(RewriteError, match=r"^bad\.py:2:"):
        rewrite_source("x = 1\ndef (:\n", "bad.py")


def test_relative_imports_are_user_code():
    out = rw("from . import helper\nfrom .helper import f\nf(1)\nhelper.g(2)\n")
    assert "_tc_(1, f)(1)" in out  # decided at run time: could be a re-exported torch function
    compile(out, "t.py", "exec")


def test_self_documenting_fstring_expression_keeps_its_text():
    out = rw('import torch\nprint(f"{torch.max(x).item()=} {torch.min(x)}")\n')
    assert "{torch.max(x).item()=}" in out
    assert "{_tc_(" in out  # the other expression is still wrapped


def test_lazy_hook_stays_out_of_nested_fstrings():
    src = "while False:\n    import torch\nq = f\"{'&'.join([f'{k}={torch.numel(v)}' for k, v in d.items()])}\"\ntorch.ones(1)\n"
    out = rewrite_source(src, "t.py")
    compile(out, "t.py", "exec")
    assert "{torch.numel(v)}" in out and ".lazy(" in out


def test_leading_try_block_takes_the_bootstrap_in_its_body():
    out = rw("try:\n    import torch\nexcept ImportError:\n    torch = None\ntorch.ones(1)\n")
    assert out.splitlines()[1] == f"    {BOOT}; import torch"
    assert "_tc_(1, torch.ones)(1)" in out


def test_tracked_model_bindings_register_on_their_own_line():
    from traincheck_rewrite.rewrite import Bindings

    src = textwrap.dedent(
        '''\
        import torch
        import torch.nn as nn
        class Trainer:
            def __init__(self, model):
                """Doc."""
                self.model = model ; self.x = 1
        net = nn.Linear(2, 2)
        model, opt = nn.Linear(2, 2), None
        model: nn.Module = model.to("cpu")
        model = torch.compile(model)
        for model in [net]: print(model)
        with open("x") as model:
            pass
        trainer = Trainer(model)
        trainer.model = net;
        '''
    )
    bindings = Bindings()
    out = rewrite_source(src, "t.py", models=("model", "trainer.model"), bindings=bindings)
    lines = out.splitlines()
    assert out.count("\n") == src.count("\n")
    assert lines[4] == '        """Doc."""; _tc_.track("model", model)'  # the docstring stays first
    assert lines[5] == '        self.model = model ; _tc_.track("model", self.model); self.x = 1'
    assert lines[7].endswith('None; _tc_.track("model", model)')
    assert lines[8].endswith('("cpu"); _tc_.track("model", model)')
    assert lines[9].endswith('; _tc_.track("model", model)')
    assert lines[10] == 'for model in _tc_.each("track", "model", _tc_.loop(5, [net])): print(model)'
    assert lines[12] == '    _tc_.track("model", model); pass'
    assert lines[14] == 'trainer.model = net;_tc_.track("trainer.model", trainer.model)'  # the binding's own `;` stays
    assert sorted(line for _, line in bindings.found["model"]) == [4, 6, 8, 9, 10, 11, 12]
    assert bindings.candidates == [("net", "t.py", 7)]
    compile(out, "t.py", "exec")


def test_ast_positions_agree_with_libcsts_own_on_tricky_code():
    """The fast positions (ast) and the fallback (libcst's PositionProvider) pair calls identically."""
    import ast as _ast

    import libcst as cst

    from traincheck_rewrite.rewrite.positions import call_spans, cst_call_spans

    src = textwrap.dedent(
        '''\
        @deco(a(1))
        def f(x=g(2)):
            return h(x)(k(3)).m(f"{n(4)!r:>{w(5)}}") if p(6) else [q(t) for t in r(7)]
        y = (lambda: s(8))() + {u(9): v(10)}
        z = a.b(c(d(e(11))))
        '''
    )
    fast = [(s.line, s.col, s.end_line, s.end_col, s.callee) for s in call_spans(_ast.parse(src), src)]
    slow = [(s.line, s.col, s.end_line, s.end_col, s.callee) for s in cst_call_spans(cst.parse_module(src))]
    assert fast == slow and len(fast) == 20


def _library(src: str, loops: bool = True) -> str:
    out = rewrite_library(textwrap.dedent(src).encode(), "/site/lib/m.py", "lib/m.py", ("torch",), loops).decode()
    compile(out, "m.py", "exec")
    return out


def test_library_rewrite_nests_calls_and_keeps_every_line():
    out = _library(
        """\
        import torch
        y = torch.relu(torch.sum(x))(z)
        @torch.no_grad()
        def f(x):
            return (torch
                    .relu)(x)
        """
    )
    assert out.splitlines()[1] == (
        'y = _tc_("lib/m.py:2:4", _tc_("lib/m.py:2:4", torch.relu)(_tc_("lib/m.py:2:15", torch.sum)(x)))(z)'
    )
    assert out.splitlines()[2] == '@_tc_("lib/m.py:3:1", torch.no_grad)()'
    assert out.splitlines()[4:6] == ['    return (_tc_("lib/m.py:5:11", torch', '            .relu))(x)']


def test_library_rewrite_marks_loops_with_their_iterable_whole():
    out = _library(
        """\
        import torch
        for x in a, b:
            torch.relu(x)
        while y := torch.load(it):
            torch.relu(y)
        for z in range(3):
            pass
        """
    )
    lines = out.splitlines()
    assert lines[1] == 'for x in _tc_.loop("lib/m.py:2:0", (a, b)):'
    assert lines[3] == 'while _tc_.cond("lib/m.py:4:0", (y := _tc_("lib/m.py:4:11", torch.load)(it))):'
    assert lines[5] == "for z in range(3):"  # its body makes no call
    assert "_tc_.loop" not in _library("for x in a:\n    f(x)\n", loops=False)


def test_library_rewrite_leaves_what_calls_py_leaves():
    src = """\
        import os, torch
        @torch.jit.script
        def scripted(x):
            return torch.relu(x)
        s = ", ".join(os.path.basename(p) for p in torch.load(f))
        msg = f"{torch.sum(x)}"
        é = "é"; torch.relu(é)
        """
    out = _library(src)
    assert "return torch.relu(x)" in out and "@torch.jit.script" in out
    assert '", ".join(os.path.basename(p) for p in _tc_("lib/m.py:5:43", torch.load)(f))' in out
    assert 'msg = f"{torch.sum(x)}"' in out
    assert '_tc_("lib/m.py:7:9", torch.relu)(é)' in out  # columns in characters, as calls.py counts them


@pytest.mark.parametrize("module", ["torch/optim/adam.py", "torch/amp/grad_scaler.py", "torch/nn/modules/module.py"])
def test_library_rewrite_wraps_the_sites_the_libcst_rewrite_wraps(module):
    """The same call sites as the program's files get (outside f-strings, which library sites cannot enter), and the
    calls of the module's own functions and classes, which are APIs in a library module and the program's own in a
    program's file."""
    import importlib.util
    import re
    from pathlib import Path

    path = Path(importlib.util.find_spec("torch").origin).parent.parent / module
    source = path.read_bytes()
    tree = ast.parse(source)
    in_fstrings = {(n.lineno, n.col_offset) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr)
                   for n in ast.walk(f) if isinstance(n, ast.Call)}  # fmt: skip
    sites = SiteTable()
    rewrite_source(source, str(path), sites=sites, loops=False)
    lines = source.splitlines()
    expected = {(s["line"], s["col"]) for s in sites.to_json().values()}
    expected = {(line, col) for line, col in expected
                if (line, len(lines[line - 1].decode()[:col].encode())) not in in_fstrings}  # fmt: skip
    facts = collect_names(tree, ("torch",))
    top_level = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.decorator_list}
    own = {(n.lineno, len(lines[n.lineno - 1][: n.col_offset].decode())) for n in ast.walk(tree)
           if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in top_level
           and facts.skippable_name(n.func.id) and (n.lineno, n.col_offset) not in in_fstrings}  # fmt: skip
    out = rewrite_library(source, str(path), module, ("torch",), loops=False)
    found = {(int(m[1]), int(m[2])) for m in re.finditer(rb'_tc_\("[^"]+:(\d+):(\d+)"', out)}
    assert found == expected | own
    assert len(found) > 50


def test_first_iterations_hook_a_loops_calls_only_in_its_first_iteration():
    """An optimizer's per-parameter loop: later iterations call the callee as written (one test of a local), the
    loop's iterable and else clause and the calls in a nested scope are hooked as usual."""
    src = textwrap.dedent(
        """\
        import torch
        def step(params):
            for p in params:
                torch.is_complex(p)
                [torch.ones(1) for _ in params]
            else:
                torch.zeros(1)
        """
    ).encode()
    out = rewrite_library(src, "/site/torch/optim/m.py", "torch/optim/m.py", ("torch",), False, first_iterations=True).decode()
    lines = out.splitlines()
    assert lines[2] == "    for _tc_i1, (p) in enumerate(params):"
    assert lines[3] == '        (torch.is_complex if _tc_i1 else _tc_("torch/optim/m.py:4:8", torch.is_complex))(p)'
    assert lines[4] == '        [_tc_("torch/optim/m.py:5:9", torch.ones)(1) for _ in params]'
    assert lines[6] == '        _tc_("torch/optim/m.py:7:8", torch.zeros)(1)'
    calls = []
    namespace = {"_tc_": lambda site, f: calls.append(site) or f}
    exec(compile(out, "m", "exec"), namespace)
    namespace["step"]([namespace["torch"].ones(1)] * 3)
    assert calls.count("torch/optim/m.py:4:8") == 1 and calls.count("torch/optim/m.py:5:9") == 9


def test_a_library_modules_own_functions_are_apis_when_the_module_is_instrumented():
    """`torch.nn.init.kaiming_uniform_` calls `_calculate_correct_fan` and `calculate_gain`, defined beside it: APIs
    TrainCheck's engine learns from. A module outside the instrumented packages keeps them unwrapped."""
    src = b"import math\ndef gain(x):\n    return math.sqrt(x)\ndef init_(t):\n    return gain(2)\n"
    out = rewrite_library(src, "/site/torch/nn/init.py", "torch/nn/init.py", ("torch",), loops=False)
    assert b'return _tc_("torch/nn/init.py:5:11", gain)(2)' in out
    assert b"return math.sqrt(x)" in out  # the standard library stays unwrapped
    assert b"return gain(2)" in rewrite_library(src, "/site/mylib/init.py", "mylib/init.py", ("torch",), loops=False)


class _CallHooks:
    """Hooks of every kind libcst calls, each logging its call; `leave_Call` changes the tree."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []

    def visit_Call(self, node):
        self.log.append(("visit_Call", node.func.__class__.__name__))

    def visit_Call_func(self, node):
        self.log.append(("visit_Call_func",))

    def leave_Call_func(self, node):
        self.log.append(("leave_Call_func",))

    def visit_Lambda(self, node):
        self.log.append(("visit_Lambda",))
        return False  # its body is not visited

    def leave_Call(self, original_node, updated_node):
        self.log.append(("leave_Call", len(original_node.args)))
        return updated_node.with_changes(args=[*updated_node.args, cst.Arg(cst.Integer("0"))]) if updated_node.args else updated_node


class _NameHooks(_CallHooks):
    """And hooks on bare nodes (a name, a comment inside a line's trailing whitespace): visited as libcst does."""

    def leave_Name(self, original_node, updated_node):
        self.log.append(("leave_Name", original_node.value))
        return updated_node.with_changes(value=original_node.value.upper())

    def leave_Comment(self, original_node, updated_node):
        return updated_node.with_changes(value=original_node.value.upper())


@pytest.mark.parametrize("hooks", [_CallHooks, _NameHooks])
def test_the_fast_dispatch_calls_what_libcst_calls_in_its_order(hooks):
    """rewrite/dispatch.py caches libcst's hook look-ups and skips bare nodes' children: the same hooks, arguments,
    order and result."""
    from traincheck_rewrite.rewrite.dispatch import Transformer

    class Theirs(hooks, cst.CSTTransformer):
        pass

    class Ours(hooks, Transformer):
        pass

    source = "x = f(a, (g)(b).c)  # one\nh = lambda y: k(y)\nfor i in it:\n    m.n(i) + 1\n"
    results = []
    for cls in (Theirs, Ours):
        transformer = cls()
        results.append((cst.parse_module(source).visit(transformer).code, transformer.log))
    assert results[0] == results[1]
    assert ("visit_Call_func",) in results[1][1] and "lambda y: k(y)\n" in results[1][0]
    assert results[1][0].startswith("X = F(A, (G)(B, 0).C, 0)  # ONE" if hooks is _NameHooks else "x = f(a, (g)(b, 0).c, 0)")
