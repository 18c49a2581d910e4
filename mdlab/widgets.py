"""Human review in notebook 02: ``CurationState`` (plain Python) and the ``Curator`` widget over it.

``CurationState(run_dir)``: a queue of rationales, what needs a human first (a problem's CoT and PoT
answers disagree; a right answer dropped by a check that may be wrong), then other drops, then clean
passes; filters; keep / drop / edit decisions appended to ``decisions.jsonl`` (one fsynced line per
click, so a kernel restart or a crash loses nothing; the latest per rationale wins); the position and
filters in ``curation_state.json``. ``Curator(run_dir)``: ipywidgets over the state, one rationale at
a time, with single keys (``KEYS``) through anywidget (JupyterLab, Notebook 7, VS Code, Colab).
Both are importable from ``mdlab.curate``, whose ``curated`` applies the decisions.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdlab import answers, runs
from mdlab.curate import (
    DECISIONS,
    FILTERS,
    REASONS,
    STATE,
    VERDICTS,
    CurateConfig,
    _answer_reasons,
    _disagreements,
    _order,
    _verdict,
    load_rationales,
    read_decisions,
    read_table,
    reason_list,
    recheck,
)

if TYPE_CHECKING:
    import pandas as pd


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------ the review state

# drop reasons that are certain when they fire: reading the rationale cannot overturn them
_CERTAIN = {"duplicate", "leakage", "unknown_problem"}
_MODE_NAMES = {"cot": "CoT", "pot": "PoT"}


def _attention(row: dict, disagrees: bool) -> str:
    """Why a human should look at a rationale before the clear-cut ones ("" when nothing stands out)."""
    if disagrees:
        return "the CoT and PoT answers of this problem disagree"
    reasons = set(reason_list(row["reasons"]))
    return "dropped although its answer is right" if reasons and row["correct"] and not reasons & _CERTAIN else ""


def _labels(rows: dict[str, dict]) -> dict[str, str]:
    """Readable ids, e.g. ``chal-994 · PoT · svamp-codex-pot``; ``#1``, ``#2``... where that repeats."""
    base = {rid: f"{row['problem_id']} · {_MODE_NAMES.get(row['mode'], row['mode'])} · "
                 f"{row['teacher'].split(':', 1)[-1].rsplit('/', 1)[-1]}" for rid, row in rows.items()}
    counts, seen = Counter(base.values()), Counter()
    for rid, label in base.items():
        if counts[label] > 1:
            seen[label] += 1
            base[rid] = f"{label} #{seen[label]}"
    return base


@dataclasses.dataclass
class Item:
    """What the curator shows for one rationale (the edited version when there is one)."""
    id: str
    label: str  # readable id: problem, mode, teacher (and #n when that teacher wrote several)
    problem_id: str
    mode: str
    teacher: str
    dataset: str
    question: str
    gold: float
    text: str  # the edited text when edited, else the teacher's
    answer: float | None
    status: str
    output: str
    error: str
    reasons: list[str]  # automatic reasons for the text shown (re-checked after an edit)
    auto_keep: bool
    attention: str  # why a human should look first ("" when the automatic verdict is clear-cut)
    decision: dict | None  # latest human decision
    verdict: str  # "keep" | "drop": the decision if any, else the automatic verdict
    correct: bool  # answer is answers.same as gold
    others: list[dict]  # the other rationales of the same problem: id, mode, teacher, answer, verdict


class CurationState:
    """The queue, filters, current item and decisions of one run directory (no widgets)."""

    def __init__(self, run_dir: str | os.PathLike, *, config: CurateConfig | None = None):
        self.run_dir = Path(run_dir)
        self.config = config or CurateConfig()
        table = read_table(self.run_dir)
        self.rationales = {r.id: r for r in load_rationales(self.run_dir)}
        self.rows: dict[str, dict] = {row["id"]: row for row in table.to_dict("records")}
        self.attention = {rid: _attention(row, disagrees) for (rid, row), disagrees
                          in zip(self.rows.items(), _disagreements(list(self.rows.values())))}
        first_seen: dict[str, int] = {}
        for row in self.rows.values():
            first_seen.setdefault(row["problem_id"], len(first_seen))
        # what needs a human first (disagreements, doubtful drops), then other automatic drops, then
        # clean passes; within each, one problem's rationales together, CoT before PoT, in file order
        index = {rid: i for i, rid in enumerate(self.rows)}
        self.order: list[str] = sorted(self.rows, key=lambda i: (
            0 if self.attention[i] else 1 if not self.rows[i]["keep"] else 2,
            first_seen[self.rows[i]["problem_id"]], self.rows[i]["mode"], index[i]))
        self._by_problem: dict[str, list[str]] = {}
        for rid in self.rows:
            self._by_problem.setdefault(self.rows[rid]["problem_id"], []).append(rid)
        self.labels = _labels(self.rows)
        self.store = runs.JsonlStore(self.run_dir / DECISIONS)
        self.decisions: dict[str, dict] = read_decisions(self.run_dir)
        self.filters: dict[str, str | None] = dict.fromkeys(FILTERS)
        self.queue: list[str] = list(self.order)
        self.position = 0
        self._restore()

    # ---- persistence of the position
    def _restore(self) -> None:
        path = self.run_dir / STATE
        saved = {}
        if path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                saved = {}  # replaced atomically, so only a hand edit can break it: start fresh
        options = self.options()
        filters = {k: v for k, v in (saved.get("filters") or {}).items()
                   if k in self.filters and (v is None or v in options[k])}
        self.filters.update(filters)
        self.queue = self._select()
        current = saved.get("current")
        if current in self.queue:
            self.position = self.queue.index(current)
        else:  # first visit: the first item nobody has decided on yet
            self.position = next((i for i, rid in enumerate(self.queue) if rid not in self.decisions), 0)

    def _save(self) -> None:
        runs.write_json_atomic(self.run_dir / STATE, {"current": self.current_id, "filters": self.filters,
                                                      "updated": _now()})

    # ---- queue and filters
    def options(self) -> dict[str, list[str]]:
        """The values each filter can take in this run directory."""
        present = {r for row in self.rows.values() for r in reason_list(row["reasons"])}
        return {"mode": sorted({row["mode"] for row in self.rows.values()}),
                "reason": [r for r in REASONS if r in present] + ["none"],
                "verdict": list(VERDICTS),
                "teacher": sorted({row["teacher"] for row in self.rows.values()}),
                "dataset": sorted({row["dataset"] for row in self.rows.values()})}

    def _matches(self, rid: str) -> bool:
        row, f, decision = self.rows[rid], self.filters, self.decisions.get(rid)
        if any(f[key] and row[key] != f[key] for key in ("mode", "teacher", "dataset")):
            return False
        reasons = reason_list(row["reasons"])
        if f["reason"] and (reasons if f["reason"] == "none" else f["reason"] not in reasons):
            return False
        if f["verdict"] in ("keep", "drop"):
            return _verdict(bool(row["keep"]), decision) == f["verdict"]
        return {None: True, "reviewed": decision is not None, "unreviewed": decision is None,
                "edited": decision is not None and decision["action"] == "edit"}[f["verdict"]]

    def _select(self) -> list[str]:
        return [rid for rid in self.order if self._matches(rid)]

    def set_filters(self, **filters: str | None) -> int:
        """Filter the queue (mode, reason, verdict, teacher, dataset; None = any); returns its length.

        The queue is a snapshot: deciding on an item does not move it out of the queue under
        your feet; set the filters again to refresh it.
        """
        unknown = sorted(set(filters) - set(self.filters))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; known: {sorted(self.filters)}")
        options = self.options()
        for key, value in filters.items():
            if value is not None and value not in options[key]:
                raise ValueError(f"filter {key}={value!r} matches nothing; "
                                 f"choose one of {options[key]} or None")
        current = self.current_id
        self.filters.update(filters)
        self.queue = self._select()
        self.position = self.queue.index(current) if current in self.queue else 0
        self._save()
        return len(self.queue)

    @property
    def current_id(self) -> str | None:
        return self.queue[self.position] if self.queue else None

    @property
    def current(self) -> Item | None:
        return self.item(self.current_id) if self.queue else None

    def next(self) -> bool:
        """Move to the next item in the queue; False at the end."""
        moved = self.position + 1 < len(self.queue)
        if moved:
            self.position += 1
            self._save()
        return moved

    def previous(self) -> bool:
        """Move to the previous item in the queue; False at the start."""
        moved = self.position > 0
        if moved:
            self.position -= 1
            self._save()
        return moved

    def goto(self, rationale_id: str) -> None:
        if rationale_id not in self.queue:
            raise KeyError(f"{rationale_id!r} is not in the current queue (filters: {self.filters})")
        self.position = self.queue.index(rationale_id)
        self._save()

    # ---- items
    def verdict(self, rationale_id: str) -> str:
        return _verdict(bool(self.rows[rationale_id]["keep"]), self.decisions.get(rationale_id))

    def item(self, rationale_id: str) -> Item:
        row, decision = self.rows[rationale_id], self.decisions.get(rationale_id)
        rationale = self.rationales.get(rationale_id)
        edited = decision is not None and decision["action"] == "edit"
        source = decision if edited else row
        answer = answers.to_float(source.get("answer"))
        reasons = reason_list(row["reasons"])
        if edited and rationale is not None:  # the same checks, on the edited text (the sandbox ran in edit())
            fresh = dataclasses.replace(rationale, text=decision["text"], params={}, tokens={}, finish_reason=None)
            reasons = _order(_answer_reasons(fresh, {"status": decision.get("status"), "answer": answer,
                                                     "gold": float(row["gold"])}, self.config)
                             + [r for r in reasons if r in ("leakage", "unknown_problem")])
        others = [{"id": o, "mode": self.rows[o]["mode"], "teacher": self.rows[o]["teacher"],
                   "answer": self._answer(o), "verdict": self.verdict(o)}
                  for o in self._by_problem[row["problem_id"]] if o != rationale_id]
        return Item(id=rationale_id, label=self.labels[rationale_id], problem_id=row["problem_id"], mode=row["mode"],
                    teacher=row["teacher"], dataset=row["dataset"], question=row["question"], gold=float(row["gold"]),
                    text=decision["text"] if edited else (rationale.text if rationale else ""),
                    answer=answer, status=source.get("status") or "", output=source.get("output") or "",
                    error=source.get("error") or "", reasons=reasons, auto_keep=bool(row["keep"]),
                    attention=self.attention[rationale_id], decision=decision, verdict=self.verdict(rationale_id),
                    correct=answer is not None and answers.same(answer, row["gold"]), others=others)

    def _answer(self, rid: str) -> float | None:
        decision = self.decisions.get(rid)
        if decision is not None and decision["action"] == "edit":
            return answers.to_float(decision.get("answer"))
        return answers.to_float(self.rows[rid]["answer"])

    # ---- actions
    def _decide(self, action: str, reason: str, **extra: Any) -> dict:
        rid = self.current_id
        if rid is None:
            raise IndexError("the queue is empty: nothing to decide on (loosen the filters)")
        row = self.rows[rid]
        record = {"id": rid, "problem_id": row["problem_id"], "mode": row["mode"], "action": action,
                  "reason": reason or "", "time": _now(), **extra}
        self.store.append(record)  # flushed and fsynced before the click returns
        self.decisions[rid] = record
        return record

    def keep(self, reason: str = "", *, advance: bool = True) -> dict:
        """Keep the current rationale (overrides the automatic verdict); then move on."""
        record = self._decide("keep", reason)
        if not (advance and self.next()):
            self._save()
        return record

    def drop(self, reason: str = "", *, advance: bool = True) -> dict:
        """Drop the current rationale; then move on."""
        record = self._decide("drop", reason)
        if not (advance and self.next()):
            self._save()
        return record

    def edit(self, text: str, reason: str = "edited") -> dict:
        """Replace the current rationale's text (kept): a PoT is re-executed, a CoT re-extracted.

        Stays on the item so the new answer can be seen.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("an edit needs the new, non-empty rationale text")
        mode = self.rows[self.current_id]["mode"] if self.queue else "cot"
        checked = recheck(text, mode, self.config)
        record = self._decide("edit", reason, text=text, **checked)
        self._save()
        return record

    # ---- progress
    def progress(self) -> dict[str, int]:
        """Reviewed items in the queue and overall."""
        return {"reviewed": sum(rid in self.decisions for rid in self.queue), "queue": len(self.queue),
                "reviewed_all": sum(rid in self.decisions for rid in self.rows), "all": len(self.rows)}

    def summary(self) -> pd.DataFrame:
        """Per mode: generated, passed checks, reviewed, kept / dropped / edited by hand, kept in the end."""
        import pandas as pd

        rows = {}
        for mode in self.options()["mode"]:
            ids = [rid for rid in self.order if self.rows[rid]["mode"] == mode]
            actions = [self.decisions[rid]["action"] for rid in ids if rid in self.decisions]
            rows[mode] = {"generated": len(ids),
                          "passed checks": sum(bool(self.rows[r]["keep"]) for r in ids),
                          "reviewed": len(actions), "kept by hand": actions.count("keep"),
                          "dropped by hand": actions.count("drop"), "edited": actions.count("edit"),
                          "kept after review": sum(self.verdict(r) == "keep" for r in ids)}
        return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------------------------------ the widget

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
  // Python asks for focus: the editor when it opens (type at once), the curator when it closes (keys work on)
  const focus = (what, tries) => {  // the box may still be hidden for a frame or two after the message
    const root = el.closest(".mdlab-curator");
    const target = what === "editor" ? root?.querySelector(".mdlab-editor textarea") : root;
    if (target && target.offsetParent !== null) target.focus({ preventScroll: true });
    else if (tries > 0) frame = requestAnimationFrame(() => focus(what, tries - 1));
  };
  model.on("msg:custom", (msg) => msg.focus && focus(msg.focus, 30));
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
        others = [f"{esc(state.labels[o['id']])} answers {_fmt(o['answer'])} [{o['verdict']}]" for o in item.others]
        if len(others) > 6:  # MCC-KD alone has ten per question: a line, not a paragraph
            others = others[:5] + [f"and {len(others) - 5} more"]
        self.context.value = "<b>Other rationales for this problem</b>: " + (", ".join(others) or "none")

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
        if show != (self.editor_box.layout.display != "none"):  # opened or closed: move the keyboard focus
            self.keys.send({"focus": "editor" if show else "curator"})
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
