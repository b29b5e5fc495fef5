#!/usr/bin/env python3
"""Draw a training run's learning curve as a self-contained SVG (plain Python: no plotting library).

    python scripts/plot_learning_curve.py --log runs/L2.log --evals runs/L2-evals.csv --random 117.3 \\
        --title "townlet-L2-lstm" --out docs/images/l2_learning_curve.svg

``--log``: what ``hamlet-train`` wrote on stderr (a progress line every 10 episodes: mean survival of the
16 training envs, epsilon-greedy). ``--evals``: CSV lines ``episode,mean_survival,mean_affordances`` from
``hamlet-train evaluate MODEL --layout unseen`` on the saved models (greedy, unseen layouts): survival on the
left axis, the mean number of affordance types used per episode on the right one. ``--random``: the random
policy's mean survival on those evaluation episodes, drawn as a dashed line.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_PROGRESS = re.compile(r"\] (\d+)/\d+ survival\s+([\d.]+)")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 360, 60, 190, 30, 45
AFFORD_MAX = 10  # the right axis (affordance types per episode; L2 has 14)


def training_points(log: Path) -> list[tuple[float, float]]:
    """(episode, mean training survival) from every progress line of a ``hamlet-train`` log."""
    points = {}
    for line in log.read_text().replace("\r", "\n").splitlines():
        match = _PROGRESS.search(line)
        if match:
            points[int(match.group(1))] = float(match.group(2))
    return sorted(points.items())


def eval_points(path: Path) -> list[tuple[float, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("episode"):
            episode, survival, affordances = line.split(",")[:3]
            rows.append((float(episode), float(survival), float(affordances)))
    return sorted(rows)


def svg(train: list[tuple[float, float]], evals: list[tuple[float, float, float]], random: float, title: str) -> str:
    last = max([p[0] for p in train] + [p[0] for p in evals] + [1.0])
    y_max = 500.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(episode: float) -> float:
        return LEFT + plot_w * episode / last

    def y(steps: float) -> float:
        return TOP + plot_h * (1 - steps / y_max)

    def on_left_axis(types: float) -> float:  # the right axis (affordance types, 0 to AFFORD_MAX) in steps
        return types * y_max / AFFORD_MAX

    def line(points: list[tuple[float, float]], colour: str, dash: str = "") -> str:
        path = " ".join(f"{x(e):.1f},{y(s):.1f}" for e, s in points)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2"{extra} points="{path}"/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{title}</text>',
    ]
    for steps in range(0, 501, 100):
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(steps)}" y2="{y(steps)}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{y(steps) + 4}" text-anchor="end">{steps}</text>')
    step = max(1, round(last / 6 / 50) * 50)
    for episode in range(0, int(last) + 1, step):
        parts.append(f'<text x="{x(episode)}" y="{TOP + plot_h + 18}" text-anchor="middle">{episode}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">episode (16 envs each)</text>')
    parts.append(
        f'<text transform="translate(16 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">survival steps</text>'
    )
    for types in range(0, AFFORD_MAX + 1, 2):
        parts.append(f'<text x="{LEFT + plot_w + 6}" y="{y(on_left_axis(types)) + 4}">{types}</text>')
    parts.append(
        f'<text transform="translate({LEFT + plot_w + 26} {TOP + plot_h / 2}) rotate(90)" text-anchor="middle">'
        "affordance types per episode</text>"
    )
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    parts.append(line([(0, random), (last, random)], "#888", "6 4"))
    if train:
        parts.append(line(train, "#9ab"))
    if evals:
        parts.append(line([(e, s) for e, s, _ in evals], "#c33"))
        parts += [f'<circle cx="{x(e):.1f}" cy="{y(s):.1f}" r="3" fill="#c33"/>' for e, s, _ in evals]
        parts.append(line([(e, on_left_axis(a)) for e, _, a in evals], "#3a3", "2 2"))
    legend = [
        ("#9ab", "", "training (epsilon-greedy)"),
        ("#c33", "", "greedy, unseen layouts"),
        ("#888", "6 4", f"random policy ({random:.0f})"),
        ("#3a3", "2 2", "greedy: affordance types"),
    ]
    for i, (colour, dash, label) in enumerate(legend):
        top = TOP + 10 + 20 * i
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{LEFT + plot_w + 40}" x2="{LEFT + plot_w + 60}" y1="{top}" y2="{top}" stroke="{colour}" '
            f'stroke-width="2"{extra}/>'
        )
        parts.append(f'<text x="{LEFT + plot_w + 65}" y="{top + 4}" font-size="11">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--evals", type=Path, required=True)
    parser.add_argument("--random", type=float, required=True)
    parser.add_argument("--title", default="learning curve")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg(training_points(args.log), eval_points(args.evals), args.random, args.title))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
