"""The curator widget: ipywidgets over a ``curate.CurationState``, keys through anywidget.

One rationale at a time with its question, gold answer, re-checked result, verdict (coloured, with
the reasons) and the other rationales of the same problem; keep / drop / edit, next / previous.
Every click goes through the state, which appends it to ``decisions.jsonl`` before returning.
Works in JupyterLab, Notebook 7, VS Code and Colab (anywidget ships its own labextension).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from mdlab import answers
from mdlab.curate import FILTERS, CurateConfig, CurationState, Item


def highlight_python(code: str) -> str:
    """HTML for a program with inline-styled syntax highlighting (no CSS needed by the frontend)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, style="friendly"))


_ANY = "(any)"
_TABLE_STYLE = ("<style>.mdlab-summary table{border-collapse:collapse;margin-top:4px}"
                ".mdlab-summary th,.mdlab-summary td{padding:2px 10px;text-align:right;"
                "border-bottom:1px solid #ddd}</style>")


def _fmt(value: Any) -> str:
    number = answers.to_float(value)
    if number is None:
        return "none"
    return f"{number:g}" if abs(number) < 1e15 else repr(number)


# single keys as in Prodigy and Argilla; arrows for moving. Shown on the buttons.
KEYS = {"k": "keep", "d": "drop", "e": "edit", "n": "next", "ArrowRight": "next", "p": "previous",
        "ArrowLeft": "previous"}
_KEY_NAMES = {"ArrowRight": "→", "ArrowLeft": "←"}
# anywidget (its labextension ships in the wheel) forwards the key presses inside the curator
_KEYS_JS = """
const KEYS = __KEYS__;
export default { render({ model, el }) {
  let frame = 0;
  const arm = () => {  // the curator's box holds this element once ipywidgets has attached it
    const root = el.closest(".mdlab-curator");
    if (!root) return void (frame = requestAnimationFrame(arm));
    root.tabIndex = 0;  // a click on its text focuses the curator, not the notebook behind it
    root.addEventListener("click", (e) => e.target.closest("button, input, textarea, select")
                                          || root.focus({ preventScroll: true }));
  };
  const onKey = (e) => {
    const root = el.closest(".mdlab-curator");
    if (!root || !root.contains(e.target) || e.ctrlKey || e.metaKey || e.altKey
        || e.target.closest("input, textarea, select, [contenteditable]")) return;  // typing
    // a plain key belongs to the curator: JupyterLab's single-key notebook commands (d d deletes
    // the cell, x cuts it) must not act on the notebook behind it
    e.stopPropagation();
    if (KEYS.includes(e.key)) { e.preventDefault(); model.send({ key: e.key }); }
  };
  arm();
  document.addEventListener("keydown", onKey, true);  // capture: before JupyterLab's own handler
  return () => { cancelAnimationFrame(frame); document.removeEventListener("keydown", onKey, true); };
} };
""".replace("__KEYS__", json.dumps(list(KEYS)))
_DONE = {"keep": "kept", "drop": "dropped", "edit": "edited"}
_COLOURS = {"keep": ("#1a7f37", "#dafbe1"), "drop": ("#cf222e", "#ffebe9"), "look": ("#9a6700", "#fff8c5")}


def _verdict_html(item: Item) -> str:
    """The verdict as a coloured line: green kept, red dropped, amber needs a look; with the reasons."""
    decision, action = item.decision, (item.decision or {}).get("action")
    checks = ", ".join(f"<code>{r}</code>" for r in item.reasons) or "all checks pass"
    automatic = f"automatic: {'keep' if item.auto_keep else 'drop'} ({checks})"
    if action == "edit":  # the checks were re-run on the edited text
        kind = "look" if item.reasons else "keep"
        text = f"<b>kept, edited</b> by you · re-checked: {checks}"
    elif action:
        reason = f" ({html.escape(decision['reason'])})" if decision.get("reason") else ""
        kind, text = action, f"<b>{_DONE[action]}</b> by you{reason} · {automatic}"
    elif item.attention:
        kind, text = "look", f"<b>needs a look</b>: {html.escape(item.attention)} · {automatic}"
    else:
        kind = "keep" if item.auto_keep else "drop"
        text = f"<b>{_DONE[kind]}</b> automatically: {checks}"
    line, background = _COLOURS[kind]
    return (f"<div class='mdlab-verdict mdlab-verdict-{kind}' style='border-left:6px solid {line};"
            f"background:{background};padding:2px 8px'>{text}</div>")


class Curator:
    """ipywidgets view over a ``CurationState``: read, then keep / drop / edit, next / previous.

    Every button has a stable CSS class (``mdlab-keep``, ``mdlab-drop``, ``mdlab-edit``,
    ``mdlab-next``, ``mdlab-previous``, ``mdlab-save``, ``mdlab-cancel``) for tests and styling.
    Keyboard: once the curator has focus (click it), ``KEYS`` act as the buttons (k keep, d drop,
    e edit, n or → next, p or ← previous), except while typing in a text box; Tab moves through
    the controls and Space or Enter presses the focused button.
    """

    BUTTONS = ("previous", "keep", "drop", "edit", "next")

    def __init__(self, run_dir: str | os.PathLike | None = None, *, state: CurationState | None = None,
                 config: CurateConfig | None = None):
        import anywidget
        import ipywidgets as w

        if state is None and run_dir is None:
            raise ValueError("Curator needs a run directory (or a CurationState)")
        self.state = state or CurationState(run_dir, config=config)
        options = self.state.options()
        self.filters = {}
        for key in FILTERS:
            # a string, not None, for "any": a Dropdown shows None as an empty box
            dropdown = w.Dropdown(options=[_ANY] + options[key], value=self.state.filters[key] or _ANY,
                                  description=key,
                                  layout=w.Layout(width="auto"), style={"description_width": "initial"})
            dropdown.add_class(f"mdlab-filter-{key}")
            dropdown.observe(self._on_filter, names="value")
            self.filters[key] = dropdown
        self.header, self.question, self.rationale, self.result = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.verdict, self.context, self.message = w.HTML(), w.HTML(), w.HTML()
        for name in ("header", "question", "verdict", "message"):
            getattr(self, name).add_class(f"mdlab-{name}")
        self.reason = w.Text(placeholder="reason for your decision (optional)", description="reason",
                             layout=w.Layout(width="40%"))
        self.reason.add_class("mdlab-reason")
        tips = {"previous": "previous item", "keep": "keep this rationale and go to the next",
                "drop": "drop this rationale and go to the next",
                "edit": "edit the text (re-checked on save)", "next": "next item"}
        styles = {"keep": "success", "drop": "danger", "edit": "warning"}
        self.buttons = {}
        for name in self.BUTTONS:
            keys = "/".join(_KEY_NAMES.get(k, k) for k, action in KEYS.items() if action == name)
            button = w.Button(description=f"{name} ({keys})", tooltip=f"{tips[name]}; key {keys}",
                              button_style=styles.get(name, ""), layout=w.Layout(width="auto"))
            button.add_class(f"mdlab-{name}")
            button.on_click(getattr(self, f"_on_{name}"))
            self.buttons[name] = button
        # width auto, not 100%: a full width plus the widget margins overflowed into a scrollbar
        self.editor = w.Textarea(layout=w.Layout(width="auto"))
        self.editor.add_class("mdlab-editor")
        self.save = w.Button(description="save edit", button_style="warning")
        self.save.add_class("mdlab-save")
        self.save.on_click(self._on_save)
        self.cancel = w.Button(description="cancel")
        self.cancel.add_class("mdlab-cancel")
        self.cancel.on_click(self._on_cancel)
        self.editor_box = w.VBox([self.editor, w.HBox([self.save, self.cancel])],
                                 layout=w.Layout(display="none"))
        self.keys = anywidget.AnyWidget(_esm=_KEYS_JS)
        self.keys.on_msg(self._on_key)
        self.progress = w.IntProgress(min=0, max=1, description="reviewed", bar_style="info")
        self.progress_label = w.Label()
        self.summary = w.HTML()
        self.summary.add_class("mdlab-summary")
        hint = w.HTML("<small>Click the curator, then use the keys on its buttons (not while typing in a box)</small>")
        self.widget = w.VBox([
            w.HBox(list(self.filters.values()), layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.progress, self.progress_label]),
            # the editor takes the rationale's place: the text is edited where it was read
            self.header, self.question, self.rationale, self.editor_box, self.result, self.verdict, self.context,
            w.HBox([self.buttons[n] for n in self.BUTTONS] + [self.reason], layout=w.Layout(flex_flow="row wrap")),
            self.message, hint, self.keys, self.summary,
        ])
        self.widget.add_class("mdlab-curator")
        self.refresh()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- rendering
    def refresh(self) -> None:
        state = self.state
        progress = state.progress()
        self.progress.max = max(1, progress["queue"])
        self.progress.value = progress["reviewed"]
        self.progress_label.value = (f"{progress['reviewed']} of {progress['queue']} in this queue; "
                                     f"{progress['reviewed_all']} of {progress['all']} overall")
        self.summary.value = _TABLE_STYLE + "<b>summary</b>" + state.summary().to_html(border=0)
        item = state.current
        for name in ("keep", "drop", "edit"):
            self.buttons[name].disabled = item is None
        self.buttons["previous"].disabled = state.position <= 0
        self.buttons["next"].disabled = state.position + 1 >= len(state.queue)
        if item is None:
            self.header.value = "<i>no rationale matches these filters</i>"
            for part in (self.question, self.rationale, self.result, self.verdict, self.context):
                part.value = ""
            return
        esc = html.escape
        self.header.value = (f"<b>{state.position + 1} / {len(state.queue)}</b> &nbsp; "
                             f"<span class='mdlab-id' title='{esc(item.id)}' style='font-size:larger'>"
                             f"<b>{esc(item.label)}</b></span>")
        self.question.value = (f"<div><b>Question</b>: {esc(item.question)}"
                               f"<br><b>Gold answer</b>: {_fmt(item.gold)}</div>")
        if item.mode == "pot":
            self.rationale.value = "<b>Program</b>" + highlight_python(item.text)
        else:
            self.rationale.value = ("<b>Chain of thought</b><div style='white-space:pre-wrap;"
                                    f"border-left:3px solid #ccc;padding-left:8px'>{esc(item.text)}</div>")
        mark = "&#10004; right" if item.correct else "&#10008; wrong"
        lines = [f"<b>Answer</b>: {_fmt(item.answer)} ({mark}; status {esc(item.status)})"]
        if item.output:
            lines.append(f"<b>Output</b><pre>{esc(item.output)}</pre>")
        if item.error:
            lines.append(f"<b>Error</b><pre style='color:#a00'>{esc(item.error)}</pre>")
        self.result.value = "<br>".join(lines)
        self.verdict.value = _verdict_html(item)
        self.context.value = ("<b>Other rationales for this problem</b>: " + (", ".join(
            f"{esc(state.labels[o['id']])} answers {_fmt(o['answer'])} [{o['verdict']}]"
            for o in item.others) or "none"))

    # ---- events
    def _act(self, action) -> None:
        """Run a state action; then a one-line confirmation naming the item, or the error."""
        try:
            record = action()
        except (IndexError, ValueError, KeyError) as exc:
            self.message.value = f"<span style='color:#a00'>{html.escape(str(exc))}</span>"
        else:
            self._show_editor(False)
            self.message.value = self._confirmation(record) if isinstance(record, dict) else ""
        self.refresh()

    def _confirmation(self, record: dict) -> str:
        item, progress = self.state.item(record["id"]), self.state.progress()
        text = f"{_DONE[record['action']]} <b>{html.escape(item.label)}</b>"
        if record["action"] == "edit":
            text += (f": answer {_fmt(item.answer)} ({'right' if item.correct else 'wrong'}), "
                     + (", ".join(item.reasons) or "all checks pass"))
        return text + f" — {progress['reviewed']} of {progress['queue']} decided"

    def _show_editor(self, show: bool) -> None:
        self.editor_box.layout.display = "" if show else "none"
        self.rationale.layout.display = "none" if show else ""

    def _take_reason(self) -> str:
        reason, self.reason.value = self.reason.value.strip(), ""
        return reason

    def _on_key(self, _widget, content: dict, _buffers=None) -> None:
        action = KEYS.get(content.get("key"))
        if action is not None and not self.buttons[action].disabled:  # a key does what its button does
            getattr(self, f"_on_{action}")()

    def _on_keep(self, _=None) -> None:
        self._act(lambda: self.state.keep(self._take_reason()))

    def _on_drop(self, _=None) -> None:
        self._act(lambda: self.state.drop(self._take_reason()))

    def _on_next(self, _=None) -> None:
        self._act(self.state.next)

    def _on_previous(self, _=None) -> None:
        self._act(self.state.previous)

    def _on_edit(self, _=None) -> None:
        item = self.state.current
        if item is not None:
            self.editor.value = item.text
            # the whole text in view, no scrollbar inside (about 90 characters a row at notebook width)
            self.editor.rows = sum(len(line) // 90 + 1 for line in item.text.splitlines()) + 1
            self._show_editor(True)

    def _on_save(self, _=None) -> None:
        self._act(lambda: self.state.edit(self.editor.value, self._take_reason() or "edited"))

    def _on_cancel(self, _=None) -> None:
        self._show_editor(False)

    def _on_filter(self, _change=None) -> None:
        self._act(lambda: self.state.set_filters(**{k: None if d.value == _ANY else d.value
                                                     for k, d in self.filters.items()}))
