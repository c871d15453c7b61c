"""``threadline demo``: a real LangGraph agent (plan, act, reflect; plain Python nodes, no
network, no LLM) checkpointed by threadline, on the configured store.

In one session of three threads it shows an interrupt and its resume, a crash and the
resume from the last checkpoint by a fresh saver and graph, a fork into a named branch,
a milestone, a sync point over the session, a cleanup dry run, then the branch graph of
one thread and the session's statistics. Every run uses fresh ids, so it can run again
on the same store.
"""

from __future__ import annotations

import operator
import secrets
import time
from datetime import timedelta
from typing import Annotated, Any, TypedDict

from rich.markup import escape

from threadline.cli import resolve
from threadline.cli.commands.inspect import print_log
from threadline.cli.commands.sessions import policy_summary
from threadline.cli.commands.stats import print_stats, stats_document
from threadline.cli.common import app, open_cli_store, options, out
from threadline.errors import AlreadyExists, InvalidInput
from threadline.model import Policy
from threadline.store import Store

#: The session's retention policy (the cleanup dry run applies it).
DEMO_POLICY = Policy(ttl_auto=timedelta(days=7), ttl_error=timedelta(days=1), max_checkpoints=8)


class AgentState(TypedDict, total=False):
    """The agent's state: LangGraph channels, threadline state keys."""

    task: str
    needs_approval: bool
    plan: list[str]
    done: Annotated[list[str], operator.add]
    notes: Annotated[list[str], operator.add]
    #: The conversation, growing every step: threadline stores each message once.
    messages: Annotated[list[dict[str, str]], operator.add]
    approved_by: str
    answer: str


class ToolError(RuntimeError):
    """The simulated failure of a tool."""


def tool_output(task: str, step: str) -> str:
    """What a tool call "returns": a few hundred bytes of plausible text, no network."""
    findings = [
        f"result {n} for '{step}' on {task}: latency p50 {3 + n} ms, recall@10 0.9{n}, "
        f"cost ${n + 1}0/month, managed and self-hosted options, notes on index build times"
        for n in range(4)
    ]
    return "\n".join(findings)


def build_agent(checkpointer: Any, faults: dict[str, int]) -> Any:
    """plan -> review (interrupts for approval when asked) -> act <-> reflect -> finish.

    ``faults`` maps a task to how many times its second tool call fails (the crash).
    """
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def plan(state: AgentState) -> dict[str, Any]:
        steps = ["search the web", "read the 3 best sources", "draft the answer"]
        return {
            "plan": steps,
            "notes": [f"planned {len(steps)} steps"],
            "messages": [
                {"role": "user", "content": state["task"]},
                {"role": "assistant", "content": "plan: " + "; ".join(steps)},
            ],
        }

    def review(state: AgentState) -> dict[str, Any]:
        if not state.get("needs_approval"):
            return {"approved_by": "auto"}
        approver = interrupt({"question": "approve this plan?", "plan": state["plan"]})
        return {"approved_by": str(approver), "notes": [f"plan approved by {approver}"]}

    def act(state: AgentState) -> dict[str, Any]:
        step = state["plan"][len(state.get("done", []))]
        if len(state.get("done", [])) == 1 and faults.get(state["task"], 0) > 0:
            faults[state["task"]] -= 1
            raise ToolError("search API timed out (simulated crash)")
        return {"done": [step], "messages": [{"role": "tool", "content": tool_output(state["task"], step)}]}

    def reflect(state: AgentState) -> dict[str, Any]:
        note = f"checked '{state['done'][-1]}' ({len(state['done'])}/{len(state['plan'])})"
        return {"notes": [note], "messages": [{"role": "assistant", "content": note}]}

    def route(state: AgentState) -> str:
        return "act" if len(state.get("done", [])) < len(state["plan"]) else "finish"

    def finish(state: AgentState) -> dict[str, Any]:
        answer = f"{state['task']}: " + ", ".join(state["done"])
        return {"answer": answer, "messages": [{"role": "assistant", "content": answer}]}

    graph = StateGraph(AgentState)
    for name, node in (
        ("plan", plan),
        ("review", review),
        ("act", act),
        ("reflect", reflect),
        ("finish", finish),
    ):
        graph.add_node(name, node)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", "act")
    graph.add_edge("act", "reflect")
    graph.add_conditional_edges("reflect", route, ["act", "finish"])
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)


def _new_session(store: Store) -> str:
    for _ in range(10):
        session = f"demo-{secrets.token_hex(3)}"
        try:
            store.sessions.create_session(session, metadata={"demo": True}, policy=DEMO_POLICY)
            return session
        except AlreadyExists:  # pragma: no cover - 1 in 16 million
            continue
    raise AlreadyExists("could not find a free demo session id")  # pragma: no cover


def _config(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable = {"thread_id": thread_id}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _short(store: Store, checkpoint_id: str) -> str:
    return resolve.abbreviations(store, [checkpoint_id])[checkpoint_id]


def _say(number: int, text: str) -> None:
    out.print(f"[bold]{number}.[/bold] {text}", soft_wrap=True)


def _more(text: str) -> None:
    out.print(f"   {text}", soft_wrap=True)


def run_demo(store: Store) -> dict[str, Any]:
    """The demo's story on ``store``; returns the ids it made (session, threads, branch, ...)."""
    from langgraph.types import Command

    from threadline.langgraph import ThreadlineSaver

    session = _new_session(store)
    threads = {role: f"{session}-{role}" for role in ("research", "coder", "writer")}
    for tid in threads.values():
        store.sessions.create_thread(
            session, tid, metadata={"langgraph": {"thread_id": tid, "checkpoint_ns": ""}}
        )
    out.print(
        f"session [cyan]{session}[/cyan] with threads research, coder, writer; "
        f"policy: {escape(policy_summary(DEMO_POLICY))}",
        soft_wrap=True,
    )
    saver = ThreadlineSaver(store)
    faults = {"fix the flaky upload test": 1}
    agent = build_agent(saver, faults)

    # 1. an interrupt (human approval of the plan) and its resume
    research = _config(threads["research"])
    first = agent.invoke({"task": "compare vector databases", "needs_approval": True}, research)
    question = first["__interrupt__"][0].value
    paused = agent.get_state(research)
    paused_id = paused.config["configurable"]["checkpoint_id"]
    _say(
        1,
        f"research: paused by interrupt() in '{paused.next[0]}': {question['question']} "
        f"({len(question['plan'])} steps); state kept in checkpoint [yellow]{_short(store, paused_id)}[/yellow]",
    )
    done = agent.invoke(Command(resume="ann"), research)
    _more(
        f"resumed with Command(resume='ann'): {len(done['done'])} steps done; answer: {escape(done['answer'])}"
    )

    # 2. a crash, then a fresh saver and graph resume from the last checkpoint
    coder = _config(threads["coder"])
    try:
        agent.invoke({"task": "fix the flaky upload test"}, coder)
        raise AssertionError("the simulated crash did not happen")  # pragma: no cover
    except ToolError as exc:
        crashed = agent.get_state(coder)
        last_id = crashed.config["configurable"]["checkpoint_id"]
        _say(
            2,
            f"coder: crashed in '{crashed.next[0]}' ({type(exc).__name__}: {exc}); last checkpoint "
            f"[yellow]{_short(store, last_id)}[/yellow] has {len(crashed.values['done'])} step done",
        )
    restarted = build_agent(ThreadlineSaver(store), {})  # as a new process would: new saver, new graph
    resumed = restarted.invoke(None, coder)
    _more(
        f"a fresh saver and graph resumed from that checkpoint: {len(resumed['done'])} steps done "
        "(the failure is kept as an error checkpoint)"
    )

    # 3. a plain run
    writer = agent.invoke({"task": "write the release notes"}, _config(threads["writer"]))
    _say(3, f"writer: ran plan, {len(writer['done'])} x act/reflect, finish")

    # 4. time travel: update_state on a past checkpoint forks a branch; it gets a name
    before_act = next(
        h for h in agent.get_state_history(research) if h.next == ("act",) and not h.values.get("done")
    )
    forked = agent.update_state(
        before_act.config, {"plan": ["read the benchmarks only", "draft a one-line answer"]}
    )
    short_run = agent.invoke(None, forked)
    fork_branch = store.threads.get(
        forked["configurable"]["checkpoint_id"], thread_id=threads["research"]
    ).branch
    store.threads.rename_branch(threads["research"], fork_branch, "short-plan")
    _say(
        4,
        f"research: update_state on checkpoint [yellow]{_short(store, before_act.config['configurable']['checkpoint_id'])}"
        f"[/yellow] (before the first act) forked branch '{fork_branch}', renamed 'short-plan'; "
        f"it ran {len(short_run['done'])} steps",
    )

    # 5. a milestone on the research answer (main's head)
    head = store.threads.latest(threads["research"], "main")
    assert head is not None
    marked = store.threads.milestone_of(head.id, "answer-v1", thread_id=threads["research"])
    _say(
        5,
        f"research: milestone 'answer-v1' of [yellow]{_short(store, head.id)}[/yellow] (protected from cleanup)",
    )

    # 6. a sync point over the session's threads, atomically
    point = store.sessions.coordinate_cross_thread_checkpoints(session, list(threads.values()), "all-done")
    _say(
        6,
        f"sync point 'all-done': one checkpoint in each of the {len(point.members)} threads, in one transaction",
    )

    # 7. what cleanup would remove under the session's policy
    plan = store.sessions.cleanup(session, dry_run=True)
    _say(
        7,
        f"cleanup dry run: {len(plan.deleted)} of {store.checkpoints.stats(list(threads.values())).checkpoints} "
        f"checkpoints would go (max 8 per thread); branch heads, milestones and sync point members stay",
    )
    return {
        "session": session,
        "threads": threads,
        "branch": "short-plan",
        "milestone": marked.id,
        "paused": paused_id,
        "answer": head.id,
        "cleanup": len(plan.deleted),
    }


@app.command()
def demo() -> None:
    """Run a small LangGraph agent (plan, act, reflect) on threadline checkpoints: interrupt and
    resume, crash and resume, fork, milestone, sync point, cleanup dry run; then look inside."""
    try:
        import langgraph  # noqa: F401
    except ModuleNotFoundError:
        raise InvalidInput(
            "the demo runs a LangGraph graph, and LangGraph is not installed: pip install 'threadline[langgraph]'"
        ) from None
    started = time.perf_counter()
    with open_cli_store() as store:
        out.print(
            f"[bold]threadline demo[/bold] on {escape(store.url)}: a plan -> act -> reflect agent on LangGraph, "
            "checkpointed by threadline",
            soft_wrap=True,
        )
        made = run_demo(store)
        research = store.threads.get_thread(made["threads"]["research"])
        out.print()
        out.print(f"[bold]$ threadline log {research.id} --graph --all[/bold]", soft_wrap=True)
        print_log(store, research, research.default_branch, all_branches=True, graph=True, limit=60)
        out.print()
        print_stats(
            stats_document(store, session=made["session"]), f"statistics of session {made['session']}"
        )
        out.print(f"finished in {time.perf_counter() - started:.1f} s", soft_wrap=True)
        prefix = "threadline" + (f" --store {options.store}" if options.store else "")
        if options.keyring is not None:
            prefix += f" --keyring {options.keyring}"
        session, tid = made["session"], research.id
        paused, answer = _short(store, made["paused"]), _short(store, made["answer"])
        out.print("\n[bold]Try next:[/bold]", soft_wrap=True)
        for command in (
            "sessions",
            f"threads --session {session}",
            f"log {tid} --graph --all",
            f"show {answer} --state",
            f"diff {paused} {answer}",
            f"branches {tid}",
            f"stats --session {session}",
            f"policy show --thread {tid}",
            f"sync-point list {session}",
            f"cleanup --session {session} --dry-run",
            f"backup create {session}.tlar --session {session}",
            "check",
        ):
            out.print(f"  {escape(prefix)} {escape(command)}", soft_wrap=True)
