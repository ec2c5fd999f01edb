"""A griffe extension for the API pages: the `>>>` examples of funcnn's docstrings become
```pycon code blocks (Markdown would read their `>>>` as three nested block quotes), and a
line of prose that starts with `>` (a wrapped "> 1e-2 is wrong") stays prose, not a quote.

An example runs from its first `>>>` line to the next blank line, its expected output included,
as doctest reads it. Only the rendered text changes; tests/test_docs.py runs the docstrings
themselves.
"""
import griffe


def markdown_safe(text: str) -> str:
    lines, out, i, in_fence = text.split("\n"), [], 0, False
    while i < len(lines):
        if not lines[i].lstrip().startswith(">>>"):
            prose_quote = lines[i].startswith(">") and not in_fence
            in_fence ^= lines[i].lstrip().startswith("```")
            out.append("\\" + lines[i] if prose_quote else lines[i])
            i += 1
            continue
        indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i][len(indent):])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [indent + "```pycon", *(indent + line for line in block), indent + "```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = markdown_safe(obj.docstring.value)
