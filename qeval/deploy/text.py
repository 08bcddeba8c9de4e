"""Words and tables for :mod:`qeval.deploy.recommend`: the why, the next option up/down, the JSON dict, the rich table."""

from __future__ import annotations

from qeval.deploy.hardware import GIB


def _gib(n: float) -> str:
    if abs(n) < GIB:
        return f"{n / 2**20:,.0f} MiB"
    return f"{n / GIB:,.1f} GiB"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f}" if x >= 0.1 else f"{x:.2g}"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def _size(n: float) -> str:
    return _gb(n) if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def _params(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 10 else f"{x:,.1f}"


def _cost(o, objective: str) -> float:
    if objective == "token" and o.usd_per_million_tokens is not None:
        return o.usd_per_million_tokens
    return o.usd_per_hour


def _speed(o) -> float:
    return o.decode_tokens_per_s if o.decode_tokens_per_s is not None else o.prefill_tokens_per_s


def _times(ratio: float, more: str, less: str) -> str:
    """'3.50x smaller' / '1.20x larger' / 'the same size' (never '1.00x smaller')."""
    if abs(ratio - 1) < 0.005:
        return f"the same {more.split()[-1] if ' ' in more else 'size'}"
    return f"{ratio:.2f}x {more}" if ratio > 1 else f"{1 / ratio:.2f}x {less}"


def mig_sentence(setup, options, best) -> str:
    """Why MIG slices were or were not offered (one sentence, or '' when the catalog has none)."""
    migs = [o for o in options if o.mig_profile]
    if not migs:
        return ""
    if best is not None and best.mig_profile:
        g = setup.defaults.mig
        return (
            f" A MIG slice suits this model: {setup.count.params_total / 1e9:,.2f}B parameters is within the MIG "
            f"guidance (models of ~{g.max_params / 1e9:.0f}B and below) and the slice decodes "
            f"{_rate(best.decode_tokens_per_s_per_sequence)} tokens/s per sequence."
            if best.decode_tokens_per_s_per_sequence is not None
            else f" A MIG slice suits this model: {setup.count.params_total / 1e9:,.2f}B parameters is within the MIG "
            f"guidance (models of ~{g.max_params / 1e9:.0f}B and below)."
        )
    refused = [o for o in migs if not o.eligible]
    if refused:
        return " " + refused[0].notes[-1].replace("MIG not offered", "MIG slices not offered", 1) + "."
    if not any(o.fits_with_headroom for o in migs):
        return " No MIG slice holds it with headroom."
    return " MIG slices fit but are not the cheapest here."


def _why_not(o) -> str:
    if not o.eligible:
        return o.notes[-1]
    if not o.fits:
        return f"needs {_gib(o.need_bytes)} per GPU, over the {_gib(o.usable_bytes)} usable"
    return (
        f"fits, but its KV room ({_gib(o.kv_budget_bytes)}) is barely over the {_gib(o.kv_cache_bytes)} "
        f"of KV cache asked for (max batch {o.max_batch})"
    )


def explain(setup, options, best, objective: str) -> tuple[str, dict]:
    """One or two sentences on why ``best`` won, and what the next option down / up changes."""
    if best is None:
        closest = min(options, key=lambda o: o.need_bytes / max(o.usable_bytes, 1))
        why = (
            f"Nothing fits with headroom at context {setup.context} x batch {setup.batch}: the closest, "
            f"{closest.label} {closest.gpu_name}, {_why_not(closest)}. Lower --context/--batch or use a smaller policy."
        ) + mig_sentence(setup, options, best)
        return why, {"down": None, "up": None}
    basis = "per million output tokens" if objective == "token" else "per hour"
    room = (
        f"a {_gib(best.kv_budget_bytes)} KV room ({setup.engine}), {best.max_batch} sequences of {setup.context:,} tokens"
        if best.max_batch is not None
        else f"{_gib(best.headroom_bytes)} free ({setup.engine})"
    )
    why = (
        f"{best.label} {best.gpu_name} is the cheapest option {basis} that fits with headroom "
        f"(${best.usd_per_hour:,.2f}/h): {_gib(best.weights_bytes)} of weights and "
        f"{_gib(best.activation_bytes + best.overhead_bytes)} of activations and runtime per GPU leave "
        f"{room}, for the {_gib(best.kv_cache_bytes)} of KV cache asked for."
    )
    if best.nodes > 1:
        why += f" No single node holds it, so it spans {best.nodes} nodes (pipeline parallelism over the network)."
    why += " Every format of the policy runs natively there." if best.native else f" Not native: {best.notes[0]}."
    why += mig_sentence(setup, options, best)

    cheaper = [o for o in options if o is not best and _cost(o, objective) <= _cost(best, objective) and o.nodes == 1]
    cheaper = [o for o in cheaper if not (o.fits_with_headroom and o.eligible)]
    cheaper = [o for o in cheaper if not (o.mig_profile and not o.eligible)]  # the MIG sentence covers those
    down = None
    if cheaper:
        o = max(cheaper, key=lambda o: (_cost(o, objective), o.count))
        down = f"{o.label} {o.gpu_name} (${o.usd_per_hour:,.2f}/h) {_why_not(o)}."
    dearer = [
        o
        for o in options
        if o is not best
        and o.fits_with_headroom
        and o.eligible
        and (o.nodes > 1) == (best.nodes > 1)
        and _cost(o, objective) >= _cost(best, objective)
        and not (o.gpu == best.gpu and o.usd_per_hour == best.usd_per_hour)  # e.g. the 7g slice of the same GPU
        and _speed(o) > 1.005 * _speed(best)  # "up" buys speed: never a slower (or merely as fast) option
    ]
    up = None
    if dearer:
        o = min(dearer, key=lambda o: (_cost(o, objective), o.count, o.mig_profile is not None))
        up = f"{o.label} {o.gpu_name} costs ${o.usd_per_hour:,.2f}/h ({o.usd_per_hour / best.usd_per_hour - 1:+.0%})"
        if best.decode_tokens_per_s and o.decode_tokens_per_s:
            speed = o.decode_tokens_per_s / best.decode_tokens_per_s
            up += (
                f", decodes {speed:.2f}x as fast "
                f"(${_usd(o.usd_per_million_tokens)} vs ${_usd(best.usd_per_million_tokens)} per million output tokens)"
            )
        elif o.usd_per_million_tokens and best.usd_per_million_tokens:
            up += (
                f", ${_usd(o.usd_per_million_tokens)} vs ${_usd(best.usd_per_million_tokens)} per million input tokens"
            )
        up += f", and leaves {_gib(o.headroom_bytes)} free per GPU"
        up += "" if o.native == best.native else (", runs natively" if o.native else ", not natively")
        up += "."
    return why, {"down": down, "up": up}


def summary_dict(setup, options, best, why: str, alternatives: dict, objective: str) -> dict:
    """The JSON-ready answer of :func:`qeval.deploy.recommend.recommend`."""
    from qeval.deploy.kv import kv_bytes_per_token

    c, w, m = setup.count, setup.weights, setup.loaded
    kv = kv_bytes_per_token(setup.layout, setup.kv_spec)
    notes = list(c.notes) + list(setup.layout.notes)
    if m.checkpoint_precision:
        notes.append(f"checkpoint precision (quantization_config): {m.checkpoint_precision}")
    opts = [o.to_dict() for o in options]
    rec = opts[options.index(best)] if best is not None else None
    return {
        "model": m.name,
        "model_type": m.text_config.model_type,
        "checkpoint_precision": m.checkpoint_precision,
        "policy": w.plan.policy,
        "kv_cache": setup.kv_spec or "bf16",
        "context": setup.context,
        "batch": setup.batch,
        "engine": setup.engine,
        "utilization": setup.utilization,
        "objective": objective,
        "params_total": c.params_total,
        "params_main": c.params_main,
        "params_mtp": c.params_mtp,
        "params_active": c.params_active,
        "params_buffers": c.buffers,
        "weight_bytes": w.total,
        "weight_bytes_main": w.main + w.buffers,
        "weight_bytes_mtp": w.mtp,
        "weight_bytes_bf16": w.bf16_total,
        "weight_bytes_read_per_token": w.active_read,
        "kv_bytes_per_token": kv["full"] + kv["sliding"],
        "kv_bytes_per_token_by_kind": kv,
        "options": opts,
        "recommended": rec,
        "why": why,
        "alternatives": alternatives,
        "warnings": list(setup.warnings),
        "notes": notes,
    }


def render(result: dict, console=None, show_all: bool = False) -> None:
    """Print ``result`` (from ``recommend``) as a rich table a person reads at a glance."""
    from rich.console import Console
    from rich.table import Table

    from qeval.console import print_wide

    con = console or Console()
    r = result
    mtp = f" ({_params(r['params_main'])} + {_params(r['params_mtp'])} MTP)" if r["params_mtp"] else ""
    active = f", {_params(r['params_active'])} active" if r["params_active"] != r["params_main"] else ""
    con.print(
        f"[bold]{r['model']}[/] ({r['model_type']}): {_params(r['params_total'])} params{mtp}{active}"
        + (f"; checkpoint {r['checkpoint_precision']}" if r["checkpoint_precision"] else "")
    )
    ratio = r["weight_bytes_bf16"] / r["weight_bytes"] if r["weight_bytes"] else 1
    kv = f"KV {r['kv_cache']} {r['kv_bytes_per_token']:,.0f} B/token" if r["kv_bytes_per_token"] else "no KV cache"
    size = "as BF16" if abs(ratio - 1) < 0.005 else f"{_times(ratio, 'smaller', 'larger')} than BF16 {_size(r['weight_bytes_bf16'])}"
    con.print(
        f"policy [bold]{r['policy']}[/]: weights {_size(r['weight_bytes'])} ({size}); "
        f"{kv}; context {r['context']:,} x batch {r['batch']}; engine {r['engine']} (memory fraction {r['utilization']:.2f})"
    )
    table = Table(show_lines=False, header_style="bold")
    for col, just in (
        ("", "left"),
        ("GPU", "left"),
        ("option", "left"),
        ("fits", "center"),
        ("weights/GPU", "right"),
        ("KV/GPU", "right"),
        ("act+ovh", "right"),
        ("free", "right"),
        ("native", "center"),
        ("decode tok/s", "right"),
        ("prefill tok/s", "right"),
        ("$/h", "right"),
        ("$/M tok", "right"),
    ):
        table.add_column(col, justify=just, no_wrap=True)
    rec = r["recommended"]
    hidden = 0
    for o in r["options"]:
        if o["mig_profile"] and not (o["fits"] and o["eligible"]) and not show_all:
            hidden += 1
            continue
        star = "*" if rec is not None and o["label"] == rec["label"] and o["gpu"] == rec["gpu"] else ""
        fits = "[green]yes[/]" if o["fits_with_headroom"] else "[yellow]tight[/]" if o["fits"] else "[red]no[/]"
        if not o["eligible"]:
            fits = "[red]n/a[/]"
        style = "bold" if star else None
        usd_m = _usd(o["usd_per_million_tokens"])
        table.add_row(
            star,
            o["gpu"].upper(),
            o["label"],
            fits,
            _gib(o["weights_bytes"]),
            _gib(o["kv_cache_bytes"]),
            _gib(o["activation_bytes"] + o["overhead_bytes"]),
            _gib(o["headroom_bytes"]) if o["fits"] else f"[red]{_gib(o['headroom_bytes'])}[/]",
            "yes" if o["native"] else "[yellow]no[/]",
            _rate(o["decode_tokens_per_s"]),
            _rate(o["prefill_tokens_per_s"]),
            f"{o['usd_per_hour']:,.2f}",
            usd_m,
            style=style,
        )
    print_wide(table, con)
    legend = (
        "fits: yes = with headroom, tight = under the headroom margin, "
        "n/a = a layout servers refuse or a MIG slice outside the MIG guidance"
    )
    if hidden:
        legend += f"; {hidden} MIG slice options that do not fit or are not offered are hidden (--all shows them)"
    con.print(f"[dim]{legend}[/]")
    for line in r["warnings"]:
        con.print(f"[yellow]warning:[/] {line}")
    con.print(f"[bold]Recommended:[/] {r['why']}")
    alt = r["alternatives"]
    if alt.get("down"):
        con.print(f"  next option down: {alt['down']}")
    if alt.get("up"):
        con.print(f"  next option up: {alt['up']}")
    if rec is not None and not rec["native"]:
        for n in rec["notes"][1:]:
            con.print(f"  {n}")
    for n in r["notes"]:
        con.print(f"[dim]note: {n}[/]")
