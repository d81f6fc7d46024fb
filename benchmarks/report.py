"""What a bench run shows a person: tables of its records, and a plot of each figure beside its baselines.

The records are the JSON lines the run printed: zmqrpc figures (from :mod:`benchmarks.bench`, each carrying
its raw pyzmq and nats-py baselines) and oslo.messaging figures (from :mod:`benchmarks.bench_oslo`, keyed
by ``system``). :func:`plot` puts each zmqrpc figure beside the baselines measured with it and the
oslo.messaging figures of the same pattern and concurrency, on log scales, so the gaps read at a glance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

Column = tuple[str, str, str]  # title, record key, format
FIGURE: list[Column] = [
    ("msgs/s", "msgs_per_s", "{:,.0f}"),
    ("p50 us", "p50_us", "{:,.0f}"),
    ("p99 us", "p99_us", "{:,.0f}"),
]


def format_table(records: list[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A right-aligned text table, one row per record; ``-`` where a record has no value."""
    rows = [[title for title, _, _ in columns]]
    for record in records:
        rows.append(["-" if record.get(key) is None else fmt.format(record[key]) for _, key, fmt in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


# What stands beside each zmqrpc figure: a name, a colour, and where its rate, p50 and p99 come from
# (keys of the zmqrpc record itself, or an oslo.messaging record of the same pattern and concurrency).
_SERIES = [
    ("zmqrpc", "tab:blue", None, ("msgs_per_s", "p50_us", "p99_us")),
    ("raw pyzmq", "tab:gray", None, ("baseline_raw_pyzmq_msgs_per_s", "baseline_p50_us", "baseline_p99_us")),
    (
        "nats-py",
        "tab:green",
        None,
        ("baseline_nats_msgs_per_s", "baseline_nats_p50_us", "baseline_nats_p99_us"),
    ),
    ("oslo.messaging + RabbitMQ", "tab:orange", "oslo.messaging+rabbit", ("msgs_per_s", "p50_us", "p99_us")),
    ("oslo.messaging + zmqrpc", "tab:purple", "oslo.messaging+zmqrpc", ("msgs_per_s", "p50_us", "p99_us")),
]
_PANELS = [
    ("msgs/s", "throughput (call: replies at the caller; cast, fanout: deliveries at the receivers)", 0),
    ("p50, µs", "p50 latency (call: round trip; cast, fanout: one send call)", 1),
    ("p99, µs", "p99 latency", 2),
]


def _label(record: dict[str, Any]) -> str:
    mode = " async" if record.get("call_mode") == "async" else ""
    figure = f"{record['pattern']} N={record['concurrency']}{mode}"
    return f"{record['topology']}\n{figure}\n{record['serialization']}"


def _compact(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def plot(records: list[dict[str, Any]], oslo_records: list[dict[str, Any]], path: str) -> None:
    """Draw throughput, p50 and p99 of every zmqrpc figure beside its baselines into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    oslo = {(r["system"], r["pattern"], r["concurrency"]): r for r in oslo_records}

    def values(record: dict[str, Any], system: str | None, keys: tuple[str, ...]) -> list[float | None]:
        source = oslo.get((system, record["pattern"], record["concurrency"])) if system else record
        return [source.get(key) if source else None for key in keys]

    table = [[values(r, system, keys) for r in records] for _, _, system, keys in _SERIES]
    shown = [i for i, rows in enumerate(table) if any(v is not None for row in rows for v in row)]
    width = 0.8 / max(1, len(shown))
    fig, axes = plt.subplots(
        len(_PANELS), 1, figsize=(max(10.0, 1.6 * len(records) + 2), 12), sharex=True, squeeze=False
    )
    for ax, (ylabel, title, k) in zip(axes[:, 0], _PANELS, strict=True):
        for slot, i in enumerate(shown):
            name, colour = _SERIES[i][:2]
            xs = [x + (slot - (len(shown) - 1) / 2) * width for x in range(len(records))]
            heights = [row[k] or 0 for row in table[i]]
            bars = ax.bar(xs, heights, width, label=name, color=colour)
            for bar, height in zip(bars, heights, strict=True):
                if height:
                    ax.annotate(
                        _compact(height),
                        (bar.get_x() + bar.get_width() / 2, height),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        rotation=90,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        ax.set_yscale("log")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(title, loc="left", fontsize=9)
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.margins(y=0.25)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=3, frameon=False)
    axes[-1, 0].set_xticks(range(len(records)), [_label(r) for r in records], fontsize=8)
    loads = [r["loadavg_1m"] for r in [*records, *oslo_records] if "loadavg_1m" in r]
    payload = (
        records[0]["payload_size"] if records else (oslo_records[0]["payload_size"] if oslo_records else 0)
    )
    load = f", load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    fig.suptitle(
        f"zmqrpc bench: {payload} B payload, {os.cpu_count()} CPUs{load}; baselines measured in the same run",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)
